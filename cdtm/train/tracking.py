"""MLflow tracking of a finished training run, from the driver: params, per-epoch metrics, the
model as an MLflow pyfunc (cdtm/train/pyfunc.py) carrying the artifact folder, and a new
version of the registered model.

Embedded default: a file store under ``./mlruns`` (MLflow 3 keeps it in maintenance mode;
we opt in with MLFLOW_ALLOW_FILE_STORE). On Databricks, ``tracking.uri: databricks``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cdtm.config import Config, to_dict

log = logging.getLogger(__name__)


def _flat(prefix: str, data: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data, dict):
        for k, v in data.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = data
    return out


def tracking_uri(uri: str) -> str:
    if "://" in uri or uri in ("databricks",) or uri.startswith(("sqlite:", "databricks")):
        return uri
    return "file://" + str(Path(uri).resolve())


def use_tracking(cfg: Config) -> None:
    """Point MLflow at ``tracking.uri`` (opting in to the local file store where it is one)."""
    import mlflow

    uri = tracking_uri(cfg.tracking.uri)
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)


class TrackingError(RuntimeError):
    """MLflow refused the run or the registration; the artifact itself is complete."""


def track(cfg: Config, model_version: str, artifact: Path) -> str | None:
    """Log one finished run from the driver (the artifact rank 0 wrote): params, per-epoch and
    final metrics, the model as an MLflow pyfunc with a signature and an input example, and a
    new version of ``tracking.registered_model``. Returns the run id (None when off)."""
    if not cfg.tracking.enabled:
        return None
    import mlflow
    from mlflow.models import infer_signature

    from cdtm.spec import FeatureSpec
    from cdtm.train.pyfunc import ARTIFACT_KEY, CdtmPyfunc, input_example

    history = json.loads((artifact / "history.json").read_text())
    metrics = json.loads((artifact / "metrics.json").read_text())
    spec = FeatureSpec.from_dict(json.loads((artifact / "feature_spec.json").read_text()))
    example = input_example(spec)
    use_tracking(cfg)
    mlflow.set_experiment(cfg.tracking.experiment)
    params = _flat(
        "", {"model": to_dict(cfg.model), "train": to_dict(cfg.train), "ds": cfg.run.ds}, {}
    )
    with mlflow.start_run(run_name=model_version) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for h in history:
            step_metrics = {
                "train_loss": h["train_loss"],
                "train_rows_per_s": h["train_rows_per_s"],
            }
            step_metrics.update(
                {f"valid_auc.{k}": v for k, v in h["valid_auc"].items() if v is not None}
            )
            mlflow.log_metrics(step_metrics, step=int(h["epoch"]))
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        mlflow.set_tag("model_version", model_version)
        probe = CdtmPyfunc()  # scores the example for the signature; a fresh one is stored
        probe.load_context(_Context({ARTIFACT_KEY: str(artifact)}))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=CdtmPyfunc(),
            artifacts={ARTIFACT_KEY: str(artifact)},
            signature=infer_signature(example, probe.predict(None, example)),
            input_example=example,
            code_paths=[str(Path(__file__).resolve().parents[1])],  # the cdtm package
            pip_requirements=[f"torch>={torch_version()}", "pandas", "pyyaml"],
        )
        run_id = run.info.run_id
    name = cfg.tracking.registered_model
    if name:
        # register_model creates the registered model where it is missing, and makes no
        # filtered search (the Unity Catalog registry refuses those).
        mv = mlflow.register_model(info.model_uri, name, tags={"model_version": model_version})
        log.info("MLflow: run %s, registered %s version %s", run_id, name, mv.version)
    return run_id


class _Context:
    def __init__(self, artifacts: dict[str, str]) -> None:
        self.artifacts = artifacts


def torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]

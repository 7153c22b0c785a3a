"""MLflow tracking of a finished training run (rank 0): params, per-epoch metrics, the
artifact folder, and a new version of the registered model.

Embedded default: a file store under ``./mlruns`` (MLflow 3 keeps it in maintenance mode;
we opt in with MLFLOW_ALLOW_FILE_STORE). On Databricks, ``tracking.uri: databricks``.
"""

from __future__ import annotations

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


def track(
    cfg: Config,
    model_version: str,
    artifact: Path,
    history: list[dict[str, Any]],
    metrics: dict[str, float | None],
) -> str | None:
    """Log one run; returns the MLflow run id (None when tracking is off)."""
    if not cfg.tracking.enabled:
        return None
    import mlflow
    from mlflow.tracking import MlflowClient

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
        mlflow.log_artifacts(str(artifact), artifact_path="model")
        mlflow.set_tag("model_version", model_version)
        run_id = run.info.run_id
        artifact_uri = f"{run.info.artifact_uri}/model"
    name = cfg.tracking.registered_model
    if name:
        from mlflow.exceptions import MlflowException

        client = MlflowClient()
        try:  # get, not a filtered search: the Unity Catalog registry refuses filters
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        mv = client.create_model_version(
            name, source=artifact_uri, run_id=run_id, tags={"model_version": model_version}
        )
        log.info("MLflow: run %s, registered %s version %s", run_id, name, mv.version)
    return run_id

"""Champion and challenger: each nightly training is a challenger, and it replaces the model
the pipeline scores with (the champion) only if it is at least as good on the same rows.

Both models are scored on the challenger's validation rows (the same files, rows and reader),
with the champion reading values added to the vocabulary after it was trained as
out-of-vocabulary. The challenger is promoted when its AUC (``train.early_stop_domain``'s,
else pooled) is not below the champion's by more than ``pipeline.promote_tolerance``.

The champion is recorded in ``<artifacts.root>/_champion.json`` (and, with tracking on, as the
``champion`` alias of ``tracking.registered_model``); ``scoring.model=champion`` resolves to it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import torch

from cdtm.config import Config
from cdtm.lake import Lake
from cdtm.scoring import ScoringError, check_spec, check_vocab
from cdtm.spec import OOV_INDEX
from cdtm.train.artifacts import (
    ArtifactError,
    champion,
    champion_history,
    load_artifact,
    verify,
    write_champion_history,
)
from cdtm.train.job import TrainInputs, reader_conf, resolve_inputs
from cdtm.train.loop import predict

log = logging.getLogger(__name__)
ALIAS = "champion"


class ChampionError(RuntimeError):
    """A promotion or rollback was refused; the champion is unchanged."""


@dataclasses.dataclass(frozen=True)
class Promotion:
    champion: str  # the model version that scores tonight
    challenger: str | None  # the version trained tonight (None: no training)
    promoted: bool
    champion_auc: float | None
    challenger_auc: float | None
    metric: str  # the validation AUC compared: "pooled" or a domain
    tolerance: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def promote(cfg: Config, version: str, reason: str) -> None:
    """Make ``version`` (an artifact under artifacts.root) the champion."""
    root = Path(cfg.artifacts.root)
    try:
        verify(root / version)
    except ArtifactError as e:
        raise ChampionError(f"cannot promote {version}: {e}") from e
    history = champion_history(root)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    history.append({"version": version, "at": now, "reason": reason})
    write_champion_history(root, history)
    _set_alias(cfg, version)
    log.info("champion is now %s (%s)", version, reason)


def rollback(cfg: Config) -> str:
    """Drop the current champion; the one it replaced scores again. Returns that version."""
    root = Path(cfg.artifacts.root)
    history = champion_history(root)
    if len(history) < 2:
        raise ChampionError(
            f"no earlier champion to roll back to under {root} "
            f"({'none recorded' if not history else 'only ' + history[-1]['version']})"
        )
    dropped, back = history[-1]["version"], history[-2]["version"]
    try:
        verify(root / back)
    except ArtifactError as e:
        raise ChampionError(f"cannot roll back to {back}: {e}") from e
    write_champion_history(root, history[:-1])
    _set_alias(cfg, back)
    log.info("rolled back: champion %s -> %s", dropped, back)
    return back


def _set_alias(cfg: Config, version: str) -> None:
    """Point the registered model's ``champion`` alias at the MLflow version of ``version``
    (tracking off, or no registered version for it: the file record alone)."""
    name = cfg.tracking.registered_model
    if not (cfg.tracking.enabled and name):
        return
    from mlflow.tracking import MlflowClient

    from cdtm.train.tracking import use_tracking

    use_tracking(cfg)
    client = MlflowClient()
    # Filtered by name only: Unity Catalog's registry refuses filters on tags.
    found = [
        mv
        for mv in client.search_model_versions(f"name='{name}'")
        if (mv.tags or {}).get("model_version") == version
    ]
    if not found:
        log.warning(
            "no registered version of %s carries model_version=%s: alias not set", name, version
        )
        return
    client.set_registered_model_alias(name, ALIAS, str(max(int(mv.version) for mv in found)))


def validation_auc(cfg: Config, artifact: Path, inputs: TrainInputs) -> float | None:
    """The model's validation AUC on ``inputs``' validation rows. A model trained on an older
    vocabulary reads the values added since as out-of-vocabulary; one whose domains, fields or
    vocabulary disagree with the lake's is refused (ScoringError)."""
    from cdtm.data.reader import FeatureReader
    from cdtm.train.metrics import ctr_metrics

    model, spec, _ = load_artifact(artifact)
    lake = Lake(inputs.lake_root)
    check_spec(spec, inputs.spec, artifact)
    if "vocab" in inputs.versions:
        check_vocab(artifact, lake, inputs.versions["vocab"])
    files, rows = inputs.reader_args("valid")
    reader = FeatureReader(files, spec, rows, reader_conf(cfg, spec))
    sizes = torch.tensor([f.vocab_size for f in spec.fields], dtype=torch.long)
    batches = (
        dataclasses.replace(b, fields=torch.where(b.fields >= sizes, OOV_INDEX, b.fields))
        for b in reader.batches(None)
    )
    labels, probs, domains = predict(model, batches, torch.device("cpu"))
    if not len(labels):
        return None
    metric = cfg.train.early_stop_domain or "pooled"
    return ctr_metrics(labels, probs, domains, spec.domains)["auc"][metric]


def challenge(cfg: Config, challenger: str | None) -> Promotion:
    """Decide which model scores tonight: promote ``challenger`` (trained tonight) if it is at
    least as good as the champion on its validation rows, give the reason either way."""
    root = Path(cfg.artifacts.root)
    current = champion(root)
    tolerance = cfg.pipeline.promote_tolerance
    metric = cfg.train.early_stop_domain or "pooled"

    def result(winner: str, promoted: bool, champ: float | None, chall: float | None, why: str):  # noqa: ANN202
        return Promotion(winner, challenger, promoted, champ, chall, metric, tolerance, why)

    if challenger is None:
        if current is None:
            raise ChampionError(f"no champion under {root} and no model trained tonight")
        return result(
            current, False, None, None, "no challenger trained tonight (pipeline.train=reuse)"
        )
    if challenger == current:
        return result(current, False, None, None, f"{challenger} is the champion already")
    data = json.loads((root / challenger / "data.json").read_text())
    pinned = dataclasses.replace(cfg.train, features_version=int(data["versions"]["features"]))
    inputs = resolve_inputs(dataclasses.replace(cfg, train=pinned))
    challenger_auc = validation_auc(cfg, root / challenger, inputs)
    if current is None:
        promote(cfg, challenger, "the first model")
        return result(challenger, True, None, challenger_auc, "the first model becomes champion")
    try:
        champion_auc = validation_auc(cfg, root / current, inputs)
    except (ScoringError, ArtifactError) as e:
        why = f"the champion {current} cannot score tonight's rows: {e}"
        promote(cfg, challenger, why)
        return result(challenger, True, None, challenger_auc, why)
    if challenger_auc is None or champion_auc is None:
        why = f"validation {metric} AUC is undefined on these rows (one class): champion kept"
        return result(current, False, champion_auc, challenger_auc, why)
    if challenger_auc >= champion_auc - tolerance:
        why = (
            f"challenger {metric} AUC {challenger_auc:.4f} >= champion {champion_auc:.4f} - "
            f"tolerance {tolerance:g}"
        )
        promote(cfg, challenger, why)
        return result(challenger, True, champion_auc, challenger_auc, why)
    why = (
        f"challenger {metric} AUC {challenger_auc:.4f} < champion {champion_auc:.4f} - "
        f"tolerance {tolerance:g}: champion kept"
    )
    log.warning("%s", why)
    return result(current, False, champion_auc, challenger_auc, why)

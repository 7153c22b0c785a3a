"""Daily batch scoring: the ``features`` rows of ``run.ds`` -> the ``scores`` Delta table.

The driver picks the model artifact, checks that its feature spec matches the lake's, and
commits the day; the rows are scored on executors (``cdtm.scoring.executor``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cdtm.config import Config
from cdtm.lake import Lake
from cdtm.scoring.executor import SCORE_COLUMNS, score_batches
from cdtm.spec import FeatureSpec, published_versions, read_feature_spec
from cdtm.train.artifacts import ArtifactError, latest_artifact, verify

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
SCORES = "scores"


class ScoringError(RuntimeError):
    """Scoring refused to run; nothing was written."""


@dataclasses.dataclass(frozen=True)
class ScoreReport:
    ds: str
    model_version: str
    artifact: str
    rows: int
    rows_per_domain: dict[str, int]
    score_mean_per_domain: dict[str, float]
    score_min_per_domain: dict[str, float]
    score_max_per_domain: dict[str, float]
    version: int
    commit_seconds: float = 0.0
    transfer_report: str | None = None  # the model's per-domain transfer report, if it has one

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_artifact(cfg: Config) -> Path:
    root = Path(cfg.artifacts.root)
    choice = cfg.scoring.model
    if choice == "latest":
        return latest_artifact(root)
    if choice.startswith("alias:"):
        return _from_registry(cfg, choice.removeprefix("alias:"))
    path = root / choice
    if not (path / "manifest.json").is_file():
        raise ScoringError(f"scoring.model={choice!r}: no artifact at {path}")
    return path


def _from_registry(cfg: Config, alias: str) -> Path:
    from mlflow.tracking import MlflowClient

    from cdtm.train.tracking import use_tracking

    use_tracking(cfg)
    name = cfg.tracking.registered_model
    if not name:
        raise ScoringError("scoring.model=alias:... needs tracking.registered_model")
    mv = MlflowClient().get_model_version_by_alias(name, alias)
    version = (mv.tags or {}).get("model_version")
    if not version:
        raise ScoringError(
            f"registered model {name}@{alias} (v{mv.version}) has no model_version tag"
        )
    return Path(cfg.artifacts.root) / version


def check_spec(model_spec: FeatureSpec, lake_spec: FeatureSpec, artifact: Path) -> None:
    """The model must have been trained on the same domains, fields and vocabulary sizes."""
    problems = []
    if model_spec.domains != lake_spec.domains:
        problems.append(f"domains {list(model_spec.domains)} vs {list(lake_spec.domains)}")
    model_fields = {f.name: f.vocab_size for f in model_spec.fields}
    lake_fields = {f.name: f.vocab_size for f in lake_spec.fields}
    if model_fields != lake_fields:
        problems.append(f"fields/vocabulary sizes {model_fields} vs {lake_fields}")
    if [d.name for d in model_spec.dense] != [d.name for d in lake_spec.dense]:
        problems.append("dense features differ")
    if problems:
        raise ScoringError(
            f"model {artifact.name} does not match the lake's feature spec: "
            + "; ".join(problems)
            + ". Re-run the ETL with etl.vocab=reuse for this model, or retrain."
        )


def score_day(spark: SparkSession, cfg: Config) -> ScoreReport:
    from pyspark.sql import functions as F

    ds = cfg.run.ds
    lake = Lake.of(cfg.lake)
    artifact = resolve_artifact(cfg).resolve()
    try:
        verify(artifact)
    except ArtifactError as e:
        raise ScoringError(str(e)) from e
    model_spec = FeatureSpec.from_dict(json.loads((artifact / "feature_spec.json").read_text()))
    if not lake.exists(cfg.scoring.table):
        raise ScoringError(f"no {cfg.scoring.table} table under {lake.root}: run the ETL first")
    if cfg.scoring.table == "features":
        spec_version = published_versions(lake.root, lake.version("features"))["feature_spec"]
    else:
        spec_version = None
    check_spec(model_spec, read_feature_spec(lake.path("feature_spec"), spec_version), artifact)
    rows = lake.read(spark, cfg.scoring.table).where(F.col("ds") == ds)
    needed = ["ds", "row_id", "domain", "user_key", "item_key", *model_spec.columns]
    missing = sorted(set(needed) - set(rows.columns))
    if missing:
        raise ScoringError(
            f"{cfg.scoring.table} lacks columns {missing} that model {artifact.name} needs"
        )
    model_version = artifact.name
    scored_at = pd.Timestamp.now(tz="UTC").floor("s")
    fn = partial(
        score_batches, artifact=str(artifact), model_version=model_version, scored_at=scored_at
    )
    # Scored and written in the same Python worker (one trip through the JVM, not two).
    res = lake.write(
        spark,
        rows.select(*needed),
        SCORES,
        mode="overwrite_day",
        partition_by=["ds"],
        ds=ds,
        transform=fn,
        transform_schema=SCORE_COLUMNS,
    )
    stats = lake.query(
        f"SELECT domain, COUNT(*) AS n, AVG(score) AS mean, MIN(score) AS lo, MAX(score) AS hi "
        f"FROM {SCORES} WHERE ds = '{ds}' GROUP BY domain ORDER BY domain",
        [SCORES],
    ).to_pylist()
    report = ScoreReport(
        ds=ds,
        model_version=model_version,
        artifact=str(artifact),
        rows=res.rows,
        rows_per_domain={r["domain"]: int(r["n"]) for r in stats},
        score_mean_per_domain={r["domain"]: round(float(r["mean"]), 6) for r in stats},
        score_min_per_domain={r["domain"]: round(float(r["lo"]), 6) for r in stats},
        score_max_per_domain={r["domain"]: round(float(r["hi"]), 6) for r in stats},
        version=res.version,
        commit_seconds=round(res.commit_seconds, 4),
        transfer_report=str(artifact / "transfer_report.md")
        if (artifact / "transfer_report.md").is_file()
        else None,
    )
    log.info(
        "scored ds=%s with %s: %d rows -> %s v%d",
        ds,
        model_version,
        res.rows,
        lake.path(SCORES),
        res.version,
    )
    return report

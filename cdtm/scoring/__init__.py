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

from cdtm.config import Config, ConfigError, check_name
from cdtm.lake import Lake
from cdtm.scoring.executor import SCORE_COLUMNS, score_batches
from cdtm.spec import FeatureSpec, moved_values, published_versions, read_feature_spec
from cdtm.train.artifacts import (
    VOCAB_FILE,
    ArtifactError,
    champion_artifact,
    latest_artifact,
    load_artifact,
    verify,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

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
    # Labelled rows only (evaluation): AUC, and mean score / observed CTR, per domain and pooled.
    auc_per_domain: dict[str, float | None] | None = None
    calibration_per_domain: dict[str, float | None] | None = None
    # Candidate scoring: the rows of the day's input and those rejected, by reason.
    input_rows: int | None = None
    rejected: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_artifact(cfg: Config) -> Path:
    root = Path(cfg.artifacts.root)
    choice = cfg.scoring.model
    if choice == "latest":
        return latest_artifact(root)
    if choice == "champion":
        return champion_artifact(root)
    if choice.startswith("alias:"):
        return _from_registry(cfg, choice.removeprefix("alias:"))
    if choice.startswith("models:/"):
        return _from_model_uri(cfg, choice)
    path = root / choice
    if not (path / "manifest.json").is_file():
        raise ScoringError(f"scoring.model={choice!r}: no artifact at {path}")
    return path


def _from_model_uri(cfg: Config, uri: str) -> Path:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>``: the artifact under
    artifacts.root that the version's ``model_version`` tag names, or else the artifact the
    registered MLflow model carries, downloaded under ``artifacts.root/_mlflow/``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from cdtm.train.tracking import use_tracking

    use_tracking(cfg)
    client = MlflowClient()
    name, _, rest = uri.removeprefix("models:/").partition("@")
    if rest:
        mv = client.get_model_version_by_alias(name, rest)
    else:
        name, _, number = uri.removeprefix("models:/").rpartition("/")
        mv = client.get_model_version(name, number)
    tag = (mv.tags or {}).get("model_version")
    if tag:
        try:
            check_name("model_version tag", tag)
        except ConfigError as e:
            raise ScoringError(f"{uri} (v{mv.version}): {e}") from None
        local = Path(cfg.artifacts.root) / tag
        if (local / "manifest.json").is_file():
            return local
    dst = Path(cfg.artifacts.root) / "_mlflow" / f"{name}-v{mv.version}"
    if not dst.exists():
        mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}", dst_path=str(dst))
    found = [p.parent for p in dst.rglob("manifest.json")]
    if len(found) != 1:
        raise ScoringError(f"{uri} (v{mv.version}): no cdtm artifact in the registered model")
    return found[0]


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
    try:
        check_name("model_version tag", version)  # a folder of artifacts.root, nothing else
    except ConfigError as e:
        raise ScoringError(f"registered model {name}@{alias} (v{mv.version}): {e}") from None
    return Path(cfg.artifacts.root) / version


def check_spec(model_spec: FeatureSpec, lake_spec: FeatureSpec, artifact: Path) -> None:
    """The model must have been trained on the same domains, on fields and dense features the
    lake still has (it may have more: a field added since is not read), with vocabularies no
    larger than the lake's (a vocabulary only grows; ``check_vocab`` then checks the values)."""
    problems = []
    if model_spec.domains != lake_spec.domains:
        problems.append(f"domains {list(model_spec.domains)} vs {list(lake_spec.domains)}")
    model_fields = {f.name: f.vocab_size for f in model_spec.fields}
    lake_fields = {f.name: f.vocab_size for f in lake_spec.fields}
    if not model_fields.keys() <= lake_fields.keys():
        problems.append(
            f"fields {sorted(model_fields.keys() - lake_fields.keys())} not in the lake"
        )
    elif any(model_fields[f] > lake_fields[f] for f in model_fields):
        problems.append(f"vocabulary sizes {model_fields} above the lake's {lake_fields}")
    if not {d.name for d in model_spec.dense} <= {d.name for d in lake_spec.dense}:
        problems.append("dense features differ")
    if problems:
        raise ScoringError(
            f"model {artifact.name} does not match the lake's feature spec: "
            + "; ".join(problems)
            + ". Retrain on this lake."
        )


def check_vocab(artifact: Path, lake: Lake, vocab_version: int) -> None:
    """Every (field, value, index) the model was trained with must be in the lake's vocabulary
    with the same index: compared by value, so that a rebuilt vocabulary of the same sizes
    (rows that would feed other values to the same embeddings) is refused."""
    path = artifact / VOCAB_FILE
    if not path.is_file():
        log.warning("model %s carries no vocabulary: values not checked", artifact.name)
        return
    import pyarrow.parquet as pq

    model = pq.read_table(path).to_pandas()
    stored = lake.query(
        'SELECT field, value, "index" FROM vocab', ["vocab"], {"vocab": vocab_version}
    ).to_pandas()
    bad = moved_values(model, stored)
    if len(bad):
        examples = ", ".join(
            f"{r.field}={r.value!r} (model {r.index}, lake {r.lake_index})"
            for r in bad.head(3).itertuples()
        )
        raise ScoringError(
            f"model {artifact.name}'s vocabulary is not a prefix of the lake's vocab "
            f"v{vocab_version}: {len(bad):,} of {len(model):,} values differ, e.g. {examples}. "
            "Its embeddings would score other values than it learned: retrain on this lake."
        )


def load_for_scoring(cfg: Config) -> tuple[Path, FeatureSpec]:
    """The artifact ``scoring.model`` names (manifest checked) and its feature spec."""
    artifact = resolve_artifact(cfg).resolve()
    try:
        verify(artifact)
    except ArtifactError as e:
        raise ScoringError(str(e)) from e
    return artifact, FeatureSpec.from_dict(json.loads((artifact / "feature_spec.json").read_text()))


def check_loads(artifact: Path) -> None:
    """On the driver, before any executor starts: weights that pass the manifest but do not
    load are refused here with the file named, not by an executor's traceback."""
    try:
        load_artifact(artifact)
    except ArtifactError as e:
        raise ScoringError(str(e)) from e


def score_day(spark: SparkSession, cfg: Config) -> ScoreReport:
    """Score the labelled rows of ``run.ds`` in ``scoring.table`` (for evaluation: the report
    gives AUC and calibration per domain)."""
    from pyspark.sql import functions as F

    ds = cfg.run.ds
    lake = Lake.of(cfg.lake)
    artifact, model_spec = load_for_scoring(cfg)
    if not lake.exists(cfg.scoring.table):
        raise ScoringError(f"no {cfg.scoring.table} table under {lake.root}: run the ETL first")
    if cfg.scoring.table == "features":
        linked = published_versions(lake.root, lake.version("features"))
        spec_version, vocab_version = linked["feature_spec"], linked.get("vocab")
    else:
        spec_version, vocab_version = None, None
    check_spec(model_spec, read_feature_spec(lake.path("feature_spec"), spec_version), artifact)
    if lake.exists("vocab"):
        check_vocab(
            artifact, lake, vocab_version if vocab_version is not None else lake.version("vocab")
        )
    check_loads(artifact)
    rows = lake.read(spark, cfg.scoring.table).where(F.col("ds") == ds)
    needed = ["ds", "row_id", "domain", "user_key", "item_key", *model_spec.columns]
    missing = sorted(set(needed) - set(rows.columns))
    if missing:
        raise ScoringError(
            f"{cfg.scoring.table} lacks columns {missing} that model {artifact.name} needs"
        )
    # A column added to the table after some days were written reads as null in those days:
    # absent (index 0) for a field, 0 for a dense feature, as the ETL writes them.
    absent = [F.coalesce(F.col(c), F.lit(0)).alias(c) for c in model_spec.columns]
    report = write_scores(spark, cfg, lake, artifact, rows.select(*needed[:5], *absent))
    if cfg.scoring.evaluate and "label" in rows.columns:
        report = dataclasses.replace(report, **evaluation(lake, cfg.scoring.table, ds, model_spec))
    return report


def evaluation(lake: Lake, table: str, ds: str, spec: FeatureSpec) -> dict[str, Any]:
    """AUC and calibration (mean score / observed CTR) per domain of the day's scores against
    the labels of the rows they scored."""
    from cdtm.train.metrics import ctr_metrics

    t = lake.query(
        f"SELECT s.score, f.label, f.domain FROM {SCORES} s JOIN {table} f "
        f"ON s.row_id = f.row_id AND s.ds = f.ds WHERE s.ds = '{ds}' AND f.ds = '{ds}'",
        [SCORES, table],
    )
    y = t.column("label").to_numpy().astype(float)
    p = t.column("score").to_numpy().astype(float)
    d = t.column("domain").to_numpy().astype(int)
    auc = ctr_metrics(y, p, d, spec.domains)["auc"]
    calibration: dict[str, float | None] = {}
    for i, name in [(-1, "pooled"), *enumerate(spec.domains)]:
        mask = d == i if i >= 0 else slice(None)
        calibration[name] = (
            round(float(p[mask].sum() / y[mask].sum()), 6) if y[mask].sum() else None
        )
    return {
        "auc_per_domain": {k: round(v, 6) if v is not None else None for k, v in auc.items()},
        "calibration_per_domain": calibration,
    }


def write_scores(
    spark: SparkSession, cfg: Config, lake: Lake, artifact: Path, rows: DataFrame
) -> ScoreReport:
    """Score ``rows`` (ds, row_id, domain, keys and the model's feature columns) and replace
    day ``run.ds`` of the ``scores`` table with them in one commit."""
    ds = cfg.run.ds
    model_version = artifact.name
    scored_at = pd.Timestamp.now(tz="UTC").floor("s")
    fn = partial(
        score_batches, artifact=str(artifact), model_version=model_version, scored_at=scored_at
    )
    # Scored and written in the same Python worker (one trip through the JVM, not two).
    res = lake.write(
        spark,
        rows,
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

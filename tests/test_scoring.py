"""Batch scoring on executors: equal to in-process predictions, idempotent, safe on mismatch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdtm.config import Config
from cdtm.lake import Lake
from cdtm.scoring import ScoringError, score_day
from cdtm.scoring.executor import batch_from_pandas
from cdtm.train.artifacts import load_artifact, seal
from cdtm.train.job import train_model
from cdtm.train.launch import launch
from tests.conftest import REPO, tiny_config


def config(base: Config, *overrides: str) -> Config:
    art = Path(base.lake.root).parent / "score-art"
    return tiny_config(base, f"artifacts.root={art}", "run.ds=2024-03-01", *overrides)


@pytest.fixture(scope="module")
def trained(ml100k):
    cfg = config(ml100k[0], "train.max_epochs=1", "train.model_version=scorer", "train.plots=false")
    train_model(cfg)
    return cfg


def test_scores_equal_in_process_predictions_and_rerun_is_identical(spark, trained) -> None:
    cfg = trained
    report = score_day(spark, cfg)
    lake = Lake(cfg.lake.root)
    features = lake.read(spark, "features").where(F.col("ds") == cfg.run.ds)
    assert report.rows == features.count() and report.model_version == "scorer"
    assert sum(report.rows_per_domain.values()) == report.rows

    model, spec, _ = load_artifact(Path(cfg.artifacts.root) / "scorer")
    rows = features.toPandas()
    with torch.no_grad():
        expected = torch.sigmoid(model(batch_from_pandas(rows, spec))).double().numpy()
    scores = lake.read(spark, "scores").where(F.col("ds") == cfg.run.ds).toPandas()
    got = rows[["row_id"]].merge(scores, on="row_id", how="left")
    assert got["score"].notna().all() and len(scores) == len(rows)
    assert np.max(np.abs(got["score"].to_numpy() - expected)) < 1e-5
    assert set(scores["domain"]) == set(spec.domains) and set(scores["model_version"]) == {"scorer"}

    v = lake.version("scores")
    score_day(spark, cfg)
    cols = ["ds", "row_id", "domain", "user_key", "item_key", "score", "model_version"]
    assertDataFrameEqual(
        lake.read(spark, "scores", v).select(*cols), lake.read(spark, "scores").select(*cols)
    )


def test_mismatched_or_tampered_model_is_refused_without_a_write(
    spark, trained, tmp_path: Path
) -> None:
    cfg = trained
    lake = Lake(cfg.lake.root)
    before = lake.version("scores") if lake.exists("scores") else None
    root = Path(cfg.artifacts.root)
    bad = root / "mismatched"
    shutil.copytree(root / "scorer", bad)
    spec = json.loads((bad / "feature_spec.json").read_text())
    spec["fields"][0]["vocab_size"] += 5
    (bad / "feature_spec.json").write_text(json.dumps(spec))
    seal(bad)  # a consistent artifact, but for another vocabulary
    with pytest.raises(
        ScoringError,
        match="does not match the lake.s feature spec: vocabulary sizes .* above the lake.s",
    ):
        score_day(spark, config(cfg, "scoring.model=mismatched"))
    (bad / "model.json").write_text("{}")  # tampered after sealing
    with pytest.raises(ScoringError, match="model.json does not match its SHA-256"):
        score_day(spark, config(cfg, "scoring.model=mismatched"))
    with pytest.raises(ScoringError, match="no artifact at"):
        score_day(spark, config(cfg, "scoring.model=nope"))
    after = lake.version("scores") if lake.exists("scores") else None
    assert after == before


@pytest.mark.parametrize("name", ["top_items_per_user", "score_distribution", "calibration"])
def test_shipped_queries_give_the_same_answer_in_spark_and_delta_rs(
    spark, trained, name: str
) -> None:
    from cdtm.sql import run_sql

    cfg = trained
    if not Lake(cfg.lake.root).exists("scores"):
        score_day(spark, cfg)
    query = (REPO / "conf" / "sql" / f"{name}.sql").read_text()
    a = run_sql(spark, cfg, query, "spark")
    b = run_sql(None, cfg, query, "delta-rs")
    assert len(a) > 0 and list(a.columns) == list(b.columns)
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    for col in a.columns:
        if a[col].dtype.kind == "f":
            assert np.allclose(a[col].to_numpy(), b[col].to_numpy(), atol=1e-6), col
        else:
            assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), col


def test_model_chosen_by_mlflow_alias(spark, ml100k, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    tracking = [
        f"tracking.uri={tmp_path / 'mlruns'}",
        "tracking.enabled=true",
        "tracking.registered_model=cdtm-alias",
    ]
    cfg = config(
        ml100k[0],
        "train.max_epochs=1",
        "train.model_version=aliased",
        "train.plots=false",
        "train.backend=single",
        *tracking,
    )
    launch(None, cfg)  # tracks and registers from the driver
    client = MlflowClient()
    version = client.search_model_versions("name = 'cdtm-alias'")[0].version
    client.set_registered_model_alias("cdtm-alias", "champion", version)
    aliased = config(ml100k[0], "scoring.model=alias:champion", *tracking)
    report = score_day(spark, aliased)
    assert report.model_version == "aliased"
    assert (
        min(report.score_min_per_domain.values()) >= 0.0
        and max(report.score_max_per_domain.values()) <= 1.0
    )
    # A registry URI, by alias or by version; without the local artifact, the one MLflow stores.
    for uri in ("models:/cdtm-alias@champion", f"models:/cdtm-alias/{version}"):
        by_uri = score_day(spark, config(ml100k[0], f"scoring.model={uri}", *tracking))
        assert by_uri.model_version == "aliased" and by_uri.rows == report.rows
    local = Path(cfg.artifacts.root) / "aliased"
    local.rename(local.with_name("moved"))
    stored = score_day(
        spark, config(ml100k[0], "scoring.model=models:/cdtm-alias@champion", *tracking)
    )
    assert "/_mlflow/cdtm-alias-v" in stored.artifact
    assert stored.score_mean_per_domain == report.score_mean_per_domain
    # An alias may only name a model version under artifacts.root.
    client.set_model_version_tag("cdtm-alias", version, "model_version", "../../elsewhere/m1")
    with pytest.raises(ScoringError, match="must be a plain name"):
        score_day(spark, aliased)

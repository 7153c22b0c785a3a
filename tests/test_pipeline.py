"""The nightly pipeline over a two-day backfill on synthetic data, and a re-run of a day."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from cdtm.config import load_config
from cdtm.lake import Lake
from cdtm.pipeline import days, run_days
from tests.conftest import REPO


def test_days_inclusive_and_ordered() -> None:
    assert days("2024-02-28", "2024-03-01") == ["2024-02-28", "2024-02-29", "2024-03-01"]
    with pytest.raises(ValueError, match="before"):
        days("2024-03-02", "2024-03-01")


def test_backfill_then_rerun_a_day(spark, tmp_path: Path) -> None:
    cfg = load_config(
        [
            REPO / "conf" / "local.yaml",
            REPO / "conf" / "datasets" / "synthetic.yaml",
            REPO / "conf" / "profiles" / "tiny.yaml",
        ],
        [
            f"lake.root={tmp_path / 'lake'}",
            f"artifacts.root={tmp_path / 'art'}",
            "train.backend=single",
            "train.max_epochs=1",
            "pipeline.train=reuse",
            "dataset.source.synthetic.rows=4000",
            "train.plots=false",
        ],
    )
    summaries = run_days(spark, cfg, ["2024-05-01", "2024-05-02"])
    assert [s["ds"] for s in summaries] == ["2024-05-01", "2024-05-02"]
    assert summaries[0]["model_version"] == summaries[1]["model_version"]  # reused, trained once
    assert len([p for p in (tmp_path / "art").iterdir() if not p.name.startswith("_")]) == 1
    lake = Lake(cfg.lake.root)
    scores = lake.read(spark, "scores")
    per_day = {r["ds"]: r["count"] for r in scores.groupBy("ds").count().collect()}
    assert per_day == {"2024-05-01": 4000, "2024-05-02": 4000}
    assert summaries[0]["data_quality"]["input_rows"] == 4000
    assert sum(summaries[0]["rows_scored_per_domain"].values()) == 4000
    saved = json.loads((tmp_path / "lake" / "_pipeline" / "2024-05-01.json").read_text())
    assert saved == summaries[0]

    again = run_days(spark, cfg, ["2024-05-01"])[0]  # a re-run needs no clean-up
    scores = lake.read(spark, "scores")
    assert scores.where(F.col("ds") == "2024-05-01").count() == 4000
    assert scores.select("ds", "row_id").distinct().count() == 8000
    assert again["rows_scored_per_domain"] == summaries[0]["rows_scored_per_domain"]

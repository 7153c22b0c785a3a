"""The nightly pipeline: for each day, ETL -> train (or reuse the current model) -> score ->
summary. Every stage replaces its own day, so a failed night is re-run as it is.

The summary (``<lake.root>/_pipeline/<ds>.json``, also logged) holds the data-quality counts,
the model version, rows scored per domain and the score distribution.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdtm.config import Config, RunConf
from cdtm.scoring import score_day
from cdtm.train.artifacts import ArtifactError, latest_artifact
from cdtm.train.launch import launch

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def days(start: str, end: str) -> list[str]:
    a, b = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if b < a:
        raise ValueError(f"--to {end} is before --from {start}")
    return [(a + dt.timedelta(n)).isoformat() for n in range((b - a).days + 1)]


def run_day(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    from feature_etl.etl import run_etl

    ds = cfg.run.ds
    log.info("pipeline ds=%s: etl", ds)
    etl = run_etl(spark, cfg)
    model_version = None
    if cfg.pipeline.train == "reuse":
        try:
            model_version = latest_artifact(Path(cfg.artifacts.root)).name
        except ArtifactError:
            log.info("pipeline ds=%s: no model yet, training one", ds)
    if model_version is None:
        log.info("pipeline ds=%s: train", ds)
        model_version = launch(spark, cfg).model_version
    log.info("pipeline ds=%s: score with %s", ds, model_version)
    scored = score_day(
        spark,
        dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, model=model_version)),
    )
    summary = {
        "ds": ds,
        "model_version": model_version,
        "data_quality": {
            "input_rows": etl.input_rows,
            "accepted_rows": etl.accepted_rows,
            "rejected": etl.rejected,
            "reject_rate": round(etl.reject_rate, 6),
        },
        "rows_scored_per_domain": scored.rows_per_domain,
        "score_distribution_per_domain": {
            d: {
                "min": scored.score_min_per_domain[d],
                "mean": m,
                "max": scored.score_max_per_domain[d],
            }
            for d, m in scored.score_mean_per_domain.items()
        },
        "tables": {**etl.versions, "scores": scored.version},
        "transfer_report": scored.transfer_report,
    }
    out = Path(cfg.lake.root) / "_pipeline" / f"{ds}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("pipeline ds=%s done: %s", ds, json.dumps(summary, sort_keys=True))
    return summary


def run_days(spark: SparkSession, cfg: Config, ds_list: list[str]) -> list[dict[str, Any]]:
    """A backfill: the days in order, each a full run_day."""
    return [run_day(spark, dataclasses.replace(cfg, run=RunConf(ds=d))) for d in ds_list]

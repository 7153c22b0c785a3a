"""The nightly pipeline: for each day, ETL -> train (or reuse the current model) -> score ->
summary. Every stage replaces its own day, so a failed night is re-run as it is.

Each night's training is a challenger; the champion (``cdtm.champion``) scores unless the
challenger is at least as good on the same validation rows.

The summary (``<lake.root>/_pipeline/<ds>.json``, also logged) holds the data-quality counts,
the model that scored (``champion``), the one trained (``challenger``), whether it was
``promoted`` and why (``promotion``: both validation AUCs), rows scored per domain and the
score distribution.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdtm.champion import challenge
from cdtm.config import Config, RunConf
from cdtm.drift import DriftError, drift_report, flagged
from cdtm.lake import Lake
from cdtm.scoring import score_day
from cdtm.spec import read_feature_spec
from cdtm.train.artifacts import champion
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
    challenger = None
    if cfg.pipeline.train == "always" or champion(Path(cfg.artifacts.root)) is None:
        log.info("pipeline ds=%s: train a challenger", ds)
        challenger = launch(spark, cfg).model_version
    promotion = challenge(cfg, challenger)
    model_version = promotion.champion
    log.info("pipeline ds=%s: score with %s (%s)", ds, model_version, promotion.reason)
    scoring = dataclasses.replace(
        cfg, scoring=dataclasses.replace(cfg.scoring, model=model_version)
    )
    if cfg.scoring.candidates is not None:
        from feature_etl.candidates import score_candidates

        scored = score_candidates(spark, scoring)
    else:
        scored = score_day(spark, scoring)
    summary = {
        "ds": ds,
        "model_version": model_version,
        "champion": model_version,
        "challenger": challenger,
        "promoted": promotion.promoted,
        "promotion": {
            "champion_auc": promotion.champion_auc,
            "challenger_auc": promotion.challenger_auc,
            "metric": f"valid.auc.{promotion.metric}",
            "tolerance": promotion.tolerance,
            "reason": promotion.reason,
        },
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
        "scored": "candidates" if cfg.scoring.candidates is not None else cfg.scoring.table,
        "candidates": None
        if scored.input_rows is None
        else {"input_rows": scored.input_rows, "rejected": scored.rejected},
        "auc_per_domain": scored.auc_per_domain,
        "calibration_per_domain": scored.calibration_per_domain,
        "tables": {**etl.versions, "scores": scored.version},
        "transfer_report": scored.transfer_report,
    }
    out = Path(cfg.lake.root) / "_pipeline" / f"{ds}.json"
    spec = read_feature_spec(Lake(cfg.lake.root).path("feature_spec"), etl.versions["feature_spec"])
    drift = drift_report(
        cfg.lake.root, spec, ds, cfg.pipeline.drift, out.with_name(f"{ds}-scores.png")
    )
    summary["drift"] = drift
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("pipeline ds=%s done: %s", ds, json.dumps(summary, sort_keys=True))
    drifted = flagged(drift)
    if drifted:
        log.warning("pipeline ds=%s: drift: %s", ds, "; ".join(drifted))
        if cfg.pipeline.fail_on_drift:
            raise DriftError(
                f"ds={ds}: drift above the thresholds (pipeline.fail_on_drift): "
                + "; ".join(drifted)
                + f". Summary: {out}"
            )
    return summary


def run_days(spark: SparkSession, cfg: Config, ds_list: list[str]) -> list[dict[str, Any]]:
    """A backfill: the days in order, each a full run_day."""
    return [run_day(spark, dataclasses.replace(cfg, run=RunConf(ds=d))) for d in ds_list]

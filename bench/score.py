"""Scoring benchmark: the scoring job (Spark mapInPandas -> scores Delta table) vs in-process
torch inference over the same rows already in memory; plus the Delta commit's own time.

The job side is ``score_day`` in a warm Spark session (what ``jobs/score.py`` calls after
start-up): read the day, score on executors, write files, commit, read back the summary.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from bench.common import log, median, timed
from bench.etl import DS
from cdtm.config import Config
from cdtm.scoring import ScoreReport, score_day
from cdtm.scoring.executor import batch_from_pandas
from cdtm.train.artifacts import load_artifact
from cdtm.train.job import train_model

BATCH = 10_000  # Spark's default Arrow batch for mapInPandas


def bench_score(
    cfg: Config, spark: Any, lake_root: str, work: Path, repeats: int
) -> dict[str, Any]:
    base = dataclasses.replace(
        cfg,
        lake=dataclasses.replace(cfg.lake, root=lake_root),
        artifacts=dataclasses.replace(cfg.artifacts, root=str(work / "score-artifacts")),
        run=dataclasses.replace(cfg.run, ds=DS),
        tracking=dataclasses.replace(cfg.tracking, enabled=False),
    )
    train_cfg = dataclasses.replace(
        base,
        train=dataclasses.replace(
            base.train,
            backend="single",
            max_epochs=1,
            max_steps_per_epoch=20,
            log_every=0,
            plots=False,
            model_version="bench-score-model",
        ),
    )
    artifact = train_model(train_cfg).artifact
    run_cfg = dataclasses.replace(
        # Scoring alone, as measured before: no evaluation join against the labels.
        base,
        scoring=dataclasses.replace(base.scoring, model="bench-score-model", evaluate=False),
    )
    score_day(spark, run_cfg)  # warm-up: Python workers, model load
    reports: list[ScoreReport] = []
    job_s, job_all, _ = timed(
        lambda: reports.append(score_day(spark, run_cfg)), repeats, "score job"
    )
    report = reports[-1]

    model, spec, _ = load_artifact(artifact)
    files = [f.removeprefix("file://") for f in spark_files(lake_root)]
    columns = ["domain", *spec.columns]
    frame = pq.ParquetDataset(files, use_legacy_dataset=False).read(columns=columns).to_pandas()

    def in_process() -> int:
        n = 0
        with torch.no_grad():
            for start in range(0, len(frame), BATCH):
                chunk = frame.iloc[start : start + BATCH]
                torch.sigmoid(model(batch_from_pandas(chunk, spec)))
                n += len(chunk)
        return n

    inproc_s, inproc_all, n = timed(in_process, repeats, "in-process torch")
    if n != report.rows:
        raise RuntimeError(f"the job scored {report.rows:,} rows, in-process {n:,}")
    out = {
        "rows": n,
        "job_seconds": round(job_s, 3),
        "job_seconds_all": [round(t, 3) for t in job_all],
        "job_rows_per_s": round(n / job_s),
        "inprocess_seconds": round(inproc_s, 3),
        "inprocess_seconds_all": [round(t, 3) for t in inproc_all],
        "inprocess_rows_per_s": round(n / inproc_s),
        "ratio_vs_inprocess": round(inproc_s / job_s, 4),
        "commit_seconds": round(median([r.commit_seconds for r in reports]), 4),
    }
    log(
        f"score: job {out['job_rows_per_s']:,} rows/s, in-process {out['inprocess_rows_per_s']:,} "
        f"rows/s, ratio {out['ratio_vs_inprocess']}, commit {out['commit_seconds']}s"
    )
    return out


def spark_files(lake_root: str) -> list[str]:
    from cdtm.lake import Lake

    return Lake(lake_root).files("features")

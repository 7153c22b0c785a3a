"""Horovod benchmark: training samples/s with 2 ranks vs 1, on Spark executors, same data.

Each run is a real ``horovod.spark.run`` launch of one capped epoch; samples/s comes from the
artifact's history (the loop's own count over the epoch's training time, start-up excluded).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from bench.common import log, median
from cdtm.config import Config
from cdtm.train.launch import launch


def bench_horovod(
    spark: SparkSession, cfg: Config, lake_root: str, work: Path, repeats: int, steps: int
) -> dict[str, Any]:
    runs: dict[int, list[float]] = {1: [], 2: []}
    for i in range(repeats):
        for n in (1, 2):
            run_cfg = dataclasses.replace(
                cfg,
                lake=dataclasses.replace(cfg.lake, root=lake_root),
                artifacts=dataclasses.replace(cfg.artifacts, root=str(work / "hvd-artifacts")),
                train=dataclasses.replace(
                    cfg.train,
                    backend="horovod-spark",
                    num_proc=n,
                    nics=["lo"],
                    max_epochs=1,
                    max_steps_per_epoch=steps,
                    log_every=0,
                    plots=False,
                    model_version=f"bench-hvd-{n}-{i}",
                ),
                tracking=dataclasses.replace(cfg.tracking, enabled=False),
            )
            res = launch(spark, run_cfg)
            history = json.loads((Path(res.artifact) / "history.json").read_text())
            runs[n].append(float(history[0]["train_rows_per_s"]))
            log(f"horovod run {i + 1}/{repeats}, {n} process(es): {runs[n][-1]:,.0f} samples/s")
    one, two = median(runs[1]), median(runs[2])
    return {
        "steps_per_rank": steps,
        "samples_per_s_1": round(one),
        "samples_per_s_2": round(two),
        "runs": {str(k): [round(x) for x in v] for k, v in runs.items()},
        "speedup_2_vs_1": round(two / one, 4),
        "cores": os.cpu_count(),
    }

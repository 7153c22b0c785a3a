"""The nightly pipeline for one day or a backfill range: ETL -> train (or reuse) -> score -> summary.

    python jobs/pipeline.py --config conf/local.yaml --config conf/datasets/movielens-1m.yaml --ds 2024-01-01
    python jobs/pipeline.py ... --from 2024-01-01 --to 2024-01-07 --set pipeline.train=reuse

Prints one JSON summary per day on stdout. Re-running a failed day needs no clean-up. Exit 3:
drift above the thresholds with pipeline.fail_on_drift set (the day's summary is written).
"""

from __future__ import annotations

import json
import sys

from cdtm.cli import load, parser, run_job, setup_logging
from cdtm.drift import DriftError
from cdtm.pipeline import days, run_days
from cdtm.spark import build_session


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--ds", help="one day (default: run.ds)")
    p.add_argument("--from", dest="start", help="first day of a backfill")
    p.add_argument("--to", dest="end", help="last day of a backfill (inclusive)")
    args = p.parse_args(argv)
    if bool(args.start) != bool(args.end) or (args.start and args.ds):
        p.error("give --ds, or both --from and --to")
    setup_logging()
    cfg = load(args)
    ds_list = days(args.start, args.end) if args.start else [args.ds or cfg.run.ds]
    spark = build_session(cfg.spark)
    try:
        for summary in run_days(spark, cfg, ds_list):
            print(json.dumps(summary, sort_keys=True))
    except DriftError as e:
        print(f"pipeline failed: {e}", file=sys.stderr)
        return 3
    return 0


def run() -> None:
    """The console script ``cdtm-pipeline``."""
    run_job("pipeline", main)


if __name__ == "__main__":
    run()

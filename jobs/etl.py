"""Feature ETL for one day: raw events -> Delta tables features, rejects, vocab, feature_spec.

    python jobs/etl.py --config conf/local.yaml --config conf/datasets/movielens-1m.yaml --set run.ds=2024-01-01
    spark-submit jobs/etl.py --config ... (same flags)

Prints the reconciliation report (JSON on stdout); exits 1 when the ETL refuses the day.
"""

from __future__ import annotations

import sys

from cdtm.cli import load, parser, run_job, setup_logging
from cdtm.lake import Lake
from cdtm.spark import build_session
from feature_etl.etl import FEATURES, EtlError, readback_check, report_json, run_etl
from feature_etl.sources import SourceError
from feature_etl.validate import DatasetError


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--verify",
        action="store_true",
        help="read the written features back through Spark and through delta-rs and compare",
    )
    args = p.parse_args(argv)
    setup_logging()
    cfg = load(args)
    spark = build_session(cfg.spark)
    try:
        report = run_etl(spark, cfg)
        if args.verify:
            lake = Lake.of(cfg.lake)
            check = readback_check(spark, lake, FEATURES, report.versions[FEATURES])
            print(
                f"read-back check: Spark and delta-rs agree on {check['aggregates']} aggregates "
                f"over {check['table']} version {check['version']}",
                file=sys.stderr,
            )
    except (EtlError, SourceError, DatasetError) as e:
        print(f"etl failed: {e}", file=sys.stderr)
        return 1
    print(report_json(report))
    return 0


def run() -> None:
    """The console script ``cdtm-etl``."""
    run_job("etl", main)


if __name__ == "__main__":
    run()

"""Feature ETL for one day: raw events -> Delta tables features, rejects, vocab, feature_spec.

    python jobs/etl.py --config conf/local.yaml --config conf/datasets/movielens-1m.yaml --set run.ds=2024-01-01
    spark-submit jobs/etl.py --config ... (same flags)

Prints the reconciliation report (JSON on stdout); exits 1 when the ETL refuses the day.
"""

from __future__ import annotations

import sys

from cdtm.cli import load, parser, setup_logging
from cdtm.spark import build_session
from feature_etl.etl import EtlError, report_json, run_etl
from feature_etl.sources import SourceError
from feature_etl.validate import DatasetError


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup_logging()
    cfg = load(args)
    spark = build_session(cfg.spark)
    try:
        report = run_etl(spark, cfg)
    except (EtlError, SourceError, DatasetError) as e:
        print(f"etl failed: {e}", file=sys.stderr)
        return 1
    print(report_json(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

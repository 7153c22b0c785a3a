"""Run SQL over the lake's Delta tables (features, rejects, vocab, feature_spec, scores).

    python jobs/sql.py --config conf/local.yaml --file conf/sql/score_distribution.sql
    python jobs/sql.py --config conf/local.yaml --engine spark --query "SELECT COUNT(*) FROM scores"

--engine delta-rs (default) needs no JVM; --engine spark uses Spark SQL. {ds} = run.ds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from cdtm.cli import load, parser, setup_logging
from cdtm.sql import run_sql


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["delta-rs", "spark"], default="delta-rs")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--query")
    group.add_argument("--file", type=Path)
    p.add_argument("--limit", type=int, default=50, help="rows to print")
    args = p.parse_args(argv)
    setup_logging()
    cfg = load(args)
    query = args.query if args.query else args.file.read_text()
    spark = None
    if args.engine == "spark":
        from cdtm.spark import build_session

        spark = build_session(cfg.spark)
    try:
        result = run_sql(spark, cfg, query, args.engine)
    except FileNotFoundError as e:
        print(f"sql failed: {e}", file=sys.stderr)
        return 1
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result.head(args.limit).to_string(index=False))
    print(f"({len(result)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

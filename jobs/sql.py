"""Run read-only SQL over the lake's tables (cdtm.features, rejects, vocab, feature_spec, scores).

    python jobs/sql.py --config conf/local.yaml --file conf/sql/score_distribution.sql
    python jobs/sql.py --config conf/local.yaml --engine spark --query "SELECT COUNT(*) FROM cdtm.scores"

--engine delta-rs (default) needs no JVM; --engine spark uses Spark SQL and the metastore.
Queries, DESCRIBE and SHOW only (cdtm/sql.py says why and how); anything else exits 2.
{ds} = run.ds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from cdtm.cli import load, parser, run_job, setup_logging
from cdtm.sql import SqlRefused, run_sql


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["delta-rs", "spark"], default="delta-rs")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--query")
    group.add_argument("--file", type=Path)
    p.add_argument("--limit", type=int, default=50, help="rows to print")
    p.add_argument("--columns", default=None, help="comma list of result columns to print")
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
    except SqlRefused as e:
        print(f"sql refused, nothing ran: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"sql failed: {e}", file=sys.stderr)
        return 1
    if args.columns:
        result = result[args.columns.split(",")]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result.head(args.limit).to_string(index=False))
    print(f"({len(result)} rows)", file=sys.stderr)
    return 0


def run() -> None:
    """The console script ``cdtm-sql``."""
    run_job("sql", main)


if __name__ == "__main__":
    run()

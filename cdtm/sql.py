"""Warehouse SQL over the lake's tables, read-only by construction, with Spark SQL or without a
JVM (delta-rs).

Analysts get read access to the project's tables and nothing else:
1. Each statement is parsed (sqlglot, Spark's dialect) before anything runs. One statement,
   and only a query (SELECT / WITH / set operations), ``DESCRIBE`` or ``SHOW``. Everything else
   is refused, naming its kind: INSERT, COPY, CREATE, DROP, LOAD, CACHE, ``ADD JAR``, a
   ``TRANSFORM ... USING`` script, several statements in one.
2. Every table a query names must be one of the lake's tables, bare (``scores``) or in the
   lake's schema (``cdtm.scores``); a file-path relation (``text.`/etc/hostname```,
   ``delta.`/path```) or any other name is refused.
3. On Spark, the query runs with ``spark.sql.runSQLOnFiles=false`` (Spark itself then refuses
   file-path relations), in the lake's schema.
``{ds}`` in the query is replaced by ``run.ds``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from cdtm.config import Config
from cdtm.lake import Lake, table_exists

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Engine = Literal["spark", "delta-rs"]
log = logging.getLogger(__name__)


class SqlRefused(ValueError):
    """The statement is not a read-only query over the lake's tables; nothing ran."""


def lake_tables(lake: Lake) -> list[str]:
    root = Path(lake.root)
    return (
        sorted(p.name for p in root.iterdir() if p.is_dir() and table_exists(str(p)))
        if root.is_dir()
        else []
    )


def check_read_only(sql: str, lake: Lake, tables: list[str]) -> str:
    """The statement rewritten over bare table names (what delta-rs registers), or SqlRefused."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError

    try:
        statements = [s for s in sqlglot.parse(sql, read="spark") if s is not None]
    except ParseError as e:
        raise SqlRefused(f"cannot parse the statement: {str(e).splitlines()[0]}") from None
    if len(statements) != 1:
        raise SqlRefused(f"one statement at a time, got {len(statements)}")
    (stmt,) = statements
    if isinstance(stmt, exp.Command):
        kind = str(stmt.this).upper()
        if kind != "SHOW":
            raise SqlRefused(f"{kind} statements are not allowed: queries only")
        return sql
    if not isinstance(stmt, (exp.Query, exp.Describe)):
        raise SqlRefused(
            f"{type(stmt).__name__.upper()} statements are not allowed: "
            "only SELECT/WITH queries, DESCRIBE and SHOW"
        )
    for node in stmt.walk():
        if isinstance(node, exp.QueryTransform):
            raise SqlRefused("TRANSFORM ... USING runs a command: not allowed")
        if isinstance(node, (exp.Insert, exp.Create, exp.Drop, exp.Delete, exp.Update)):
            raise SqlRefused(f"{type(node).__name__.upper()} inside a query is not allowed")
    ctes = {c.alias_or_name for c in stmt.find_all(exp.CTE)}
    for table in stmt.find_all(exp.Table):
        if table.name in ctes and not table.db:
            continue
        qualified = ".".join(p for p in (table.catalog, table.db, table.name) if p)
        ok_space = (table.db in ("", lake.schema or "")) and (
            table.catalog in ("", lake.catalog or "")
        )
        if not ok_space or table.name not in tables:
            raise SqlRefused(
                f"{qualified!r} is not a table of the lake: queries may read "
                f"{', '.join(lake.table_name(t) or t for t in tables)} (or their bare names)"
            )
        table.set("catalog", None)
        table.set("db", None)
    return stmt.sql(dialect="spark")


def run_sql(
    spark: SparkSession | None, cfg: Config, query: str, engine: Engine = "delta-rs"
) -> pd.DataFrame:
    """Run one read-only statement (see the module's rules); SqlRefused if it is not one."""
    lake = Lake.of(cfg.lake)
    names = lake_tables(lake)
    if not names:
        raise FileNotFoundError(f"no Delta tables under {lake.root}")
    sql = query.replace("{ds}", cfg.run.ds)
    bare = check_read_only(sql, lake, names)
    if engine == "delta-rs":
        if bare.lstrip().upper().startswith(("DESCRIBE", "SHOW")):
            raise SqlRefused("DESCRIBE and SHOW need --engine spark (the metastore)")
        return lake.query(bare, names).to_pandas()
    if spark is None:
        raise ValueError("engine=spark needs a SparkSession")
    lake.register_all(spark, names)
    database = spark.catalog.currentDatabase()
    on_files = spark.conf.get("spark.sql.runSQLOnFiles", "true")
    try:
        if lake.schema:
            spark.sql(f"USE {'.'.join(p for p in (lake.catalog, lake.schema) if p)}")
        spark.conf.set("spark.sql.runSQLOnFiles", "false")
        return spark.sql(sql).toPandas()
    finally:  # the session may be shared (tests, notebooks): leave it as it was
        spark.conf.set("spark.sql.runSQLOnFiles", on_files or "true")
        spark.catalog.setCurrentDatabase(database)

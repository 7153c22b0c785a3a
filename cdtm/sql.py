"""Warehouse SQL over the lake's tables, with Spark SQL or without a JVM (delta-rs).

Every Delta table under ``lake.root`` is registered under its folder name as a view of its
current version. ``{ds}`` in the query is replaced by ``run.ds``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from cdtm.config import Config
from cdtm.lake import Lake, table_exists

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Engine = Literal["spark", "delta-rs"]


def lake_tables(lake: Lake) -> list[str]:
    root = Path(lake.root)
    return (
        sorted(p.name for p in root.iterdir() if p.is_dir() and table_exists(str(p)))
        if root.is_dir()
        else []
    )


def run_sql(
    spark: SparkSession | None, cfg: Config, query: str, engine: Engine = "delta-rs"
) -> pd.DataFrame:
    lake = Lake.of(cfg.lake)
    sql = query.replace("{ds}", cfg.run.ds)
    names = lake_tables(lake)
    if not names:
        raise FileNotFoundError(f"no Delta tables under {lake.root}")
    if engine == "delta-rs":
        return lake.query(sql, names).to_pandas()
    if spark is None:
        raise ValueError("engine=spark needs a SparkSession")
    for name in names:
        lake.read(spark, name).createOrReplaceTempView(name)
    return spark.sql(sql).toPandas()

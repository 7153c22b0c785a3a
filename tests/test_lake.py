"""Delta I/O: one commit per write, day replacement, schema checks, atomicity, delta-rs reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdtm import lake

REPO = Path(__file__).resolve().parents[1]


def day_frame(spark, ds: str, n: int, offset: int = 0):
    return spark.range(offset, offset + n, numPartitions=3).select(
        F.lit(ds).alias("ds"),
        F.col("id"),
        (F.col("id") % 5).cast("int").alias("k"),
        F.concat(F.lit("v"), F.col("id").cast("string")).alias("s"),
        (F.col("id") / 2).cast("double").alias("x"),
    )


def test_write_and_read_back_one_commit(spark, tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    df = day_frame(spark, "2024-01-01", 1000)
    res = lake.write_table(
        spark, df, root, mode="overwrite_day", partition_by=["ds"], ds="2024-01-01"
    )
    assert (res.version, res.rows) == (0, 1000)
    assert res.files == 3  # one file per task
    back = lake.read_table(spark, root)
    assert back.columns == df.columns  # partition column restored, table order
    assertDataFrameEqual(back, df)
    # Delta stats in every add action.
    adds = DeltaTable(root).get_add_actions(flatten=True)
    names = adds.column_names
    assert {"num_records", "min.id", "max.id", "null_count.s", "min.s"} <= set(names)
    col = {n: adds.column(i).to_pylist() for i, n in enumerate(names)}
    assert sum(col["num_records"]) == 1000
    assert min(col["min.id"]) == 0 and max(col["max.id"]) == 999
    assert set(col["partition.ds"]) == {"2024-01-01"}


def test_overwrite_day_replaces_only_that_day(spark, tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    a1 = day_frame(spark, "2024-01-01", 100)
    b = day_frame(spark, "2024-01-02", 50, offset=1000)
    a2 = day_frame(spark, "2024-01-01", 30, offset=5000)
    lake.write_table(spark, a1, root, mode="overwrite_day", partition_by=["ds"], ds="2024-01-01")
    lake.write_table(spark, b, root, mode="overwrite_day", partition_by=["ds"], ds="2024-01-02")
    res = lake.write_table(
        spark, a2, root, mode="overwrite_day", partition_by=["ds"], ds="2024-01-01"
    )
    assert res.version == 2
    assertDataFrameEqual(lake.read_table(spark, root), a2.unionByName(b))
    # Time travel: version 1 still holds the first day-A rows.
    assertDataFrameEqual(lake.read_table(spark, root, version=1), a1.unionByName(b))
    ops = [h["operation"] for h in lake.history(root)]
    assert ops[0] in ("WRITE", "CREATE TABLE") and len(ops) == 3


def test_overwrite_day_refuses_rows_of_another_day(spark, tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    lake.write_table(
        spark,
        day_frame(spark, "2024-01-01", 10),
        root,
        mode="overwrite_day",
        partition_by=["ds"],
        ds="2024-01-01",
    )
    with pytest.raises(Exception, match="replaces only"):
        lake.write_table(
            spark,
            day_frame(spark, "2024-01-02", 10),
            root,
            mode="overwrite_day",
            partition_by=["ds"],
            ds="2024-01-01",
        )
    assert lake.table_version(root) == 0


def test_schema_mismatch_fails_and_table_unchanged(spark, tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    df = day_frame(spark, "2024-01-01", 10)
    lake.write_table(spark, df, root, mode="overwrite_day", partition_by=["ds"], ds="2024-01-01")
    files_before = sorted(p for p in os.listdir(tmp_path / "t" / "ds=2024-01-01"))
    with pytest.raises(
        lake.SchemaMismatchError, match=r"column 'k': table has int32, DataFrame has int64"
    ):
        lake.write_table(
            spark,
            df.withColumn("k", F.col("k").cast("long")),
            root,
            mode="append",
            partition_by=["ds"],
        )
    with pytest.raises(lake.SchemaMismatchError, match=r"column 'extra' is not in the table"):
        lake.write_table(
            spark, df.withColumn("extra", F.lit(1)), root, mode="append", partition_by=["ds"]
        )
    assert lake.table_version(root) == 0
    assert sorted(os.listdir(tmp_path / "t" / "ds=2024-01-01")) == files_before  # no file written
    assertDataFrameEqual(lake.read_table(spark, root), df)


@pytest.mark.parametrize("engine", ["delta-rs", "spark"])
def test_evolve_adds_columns_and_refuses_a_removed_or_retyped_one(
    spark, tmp_path: Path, engine: str
) -> None:
    root = str(tmp_path / "t")

    def write(df, ds: str) -> None:  # noqa: ANN001
        lake.write_table(
            spark,
            df,
            root,
            mode="overwrite_day",
            partition_by=["ds"],
            ds=ds,
            engine=engine,
            evolve=True,
        )

    write(day_frame(spark, "2024-01-01", 10), "2024-01-01")
    # A new column, placed anywhere in the DataFrame, joins the table last.
    grown = day_frame(spark, "2024-01-02", 10, offset=10).withColumn("new", F.lit(7))
    write(grown.select("new", *grown.columns[:-1]), "2024-01-02")
    back = lake.read_table(spark, root)
    assert back.columns == ["ds", "id", "k", "s", "x", "new"]
    per_day = {r["ds"]: r["n"] for r in back.groupBy("ds").agg(F.sum("new").alias("n")).collect()}
    assert per_day == {"2024-01-01": None, "2024-01-02": 70}  # older rows read null
    version = lake.table_version(root)
    with pytest.raises(lake.SchemaMismatchError, match=r"columns \['s'\] of the table are not"):
        write(grown.drop("s"), "2024-01-02")
    with pytest.raises(lake.SchemaMismatchError, match=r"column 'k': table has int32"):
        write(grown.withColumn("k", F.col("k").cast("long")), "2024-01-02")
    assert lake.table_version(root) == version


def test_create_mode_refuses_existing_table(spark, tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    lake.write_table(
        spark, day_frame(spark, "2024-01-01", 5), root, mode="create", partition_by=["ds"]
    )
    with pytest.raises(lake.LakeError, match="already exists"):
        lake.write_table(
            spark, day_frame(spark, "2024-01-01", 5), root, mode="create", partition_by=["ds"]
        )


def test_empty_table_reads_as_empty_frame(spark, tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    df = day_frame(spark, "2024-01-01", 5).limit(0)
    res = lake.write_table(spark, df, root, mode="overwrite", partition_by=["ds"])
    assert (res.rows, res.files) == (0, 0)
    back = lake.read_table(spark, root)
    assert back.count() == 0 and back.columns == df.columns


def test_delta_rs_reads_what_spark_reads(spark, tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    df = day_frame(spark, "2024-01-01", 200).unionByName(
        day_frame(spark, "2024-01-02", 100, offset=500)
    )
    lake.write_table(spark, df, root, mode="overwrite", partition_by=["ds"])
    via_rs = lake.query("SELECT ds, id, k, s, x FROM t", {"t": root})
    via_spark = lake.read_table(spark, root).toPandas()
    left = via_rs.to_pandas().sort_values("id").reset_index(drop=True)
    right = via_spark.sort_values("id").reset_index(drop=True)
    assert left.equals(right[left.columns])
    agg = lake.query(
        "SELECT ds, COUNT(*) AS n, SUM(k) AS sk FROM t GROUP BY ds ORDER BY ds", {"t": root}
    ).to_pylist()
    expected = [
        {"ds": r["ds"], "n": r["n"], "sk": r["sk"]}
        for r in df.groupBy("ds")
        .agg(F.count("*").alias("n"), F.sum("k").alias("sk"))
        .orderBy("ds")
        .collect()
    ]
    assert agg == expected


def test_files_are_file_urls_of_that_version(spark, tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    lake.write_table(
        spark,
        day_frame(spark, "2024-01-01", 30),
        root,
        mode="overwrite_day",
        partition_by=["ds"],
        ds="2024-01-01",
    )
    lake.write_table(
        spark,
        day_frame(spark, "2024-01-01", 12),
        root,
        mode="overwrite_day",
        partition_by=["ds"],
        ds="2024-01-01",
    )
    v0, v1 = lake.table_files(root, 0), lake.table_files(root)
    assert all(u.startswith("file:///") for u in v0 + v1)
    assert set(v0).isdisjoint(v1)
    import pyarrow.parquet as pq

    assert sum(pq.read_metadata(u.removeprefix("file://")).num_rows for u in v1) == 12


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pyspark.sql import functions as F
    from cdtm.config import SparkConf
    from cdtm.spark import build_session
    from cdtm.lake import delta

    root = sys.argv[1]
    spark = build_session(SparkConf(master="local[1]", conf={"spark.ui.enabled": "false",
        "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}))

    def die_before_commit(*args, **kwargs):
        print("files written; killing the writer before its commit", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    delta._commit = die_before_commit
    df = spark.range(0, 500, numPartitions=2).select(F.lit("2024-01-01").alias("ds"), F.col("id"))
    delta.write_table(spark, df, root, mode="overwrite_day", partition_by=["ds"], ds="2024-01-01")
    """
)


def test_writer_killed_before_commit_leaves_table_unchanged(spark, tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    before = spark.range(0, 77).select(F.lit("2024-01-01").alias("ds"), F.col("id"))
    lake.write_table(
        spark, before, root, mode="overwrite_day", partition_by=["ds"], ds="2024-01-01"
    )
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), root],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr[-3000:]
    assert "killing the writer" in proc.stdout
    on_disk = list((tmp_path / "t" / "ds=2024-01-01").glob("*.parquet"))
    assert len(on_disk) > len(lake.table_files(root))  # the killed writer did write files...
    assert lake.table_version(root) == 0  # ...but the table never saw them
    assertDataFrameEqual(lake.read_table(spark, root), before)
    log = [
        json.loads(line)
        for line in (tmp_path / "t" / "_delta_log" / "00000000000000000000.json")
        .read_text()
        .splitlines()
    ]
    assert sum(1 for a in log if "add" in a) == len(lake.table_files(root))

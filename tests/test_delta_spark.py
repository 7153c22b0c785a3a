"""The Spark engine (delta-spark's format("delta")): day replacement, lineage in userMetadata,
versionAsOf, OPTIMIZE, tables by name in the metastore across sessions, both engines reading
each other's tables, deletion vectors, and spark-submit's settings winning over the config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdtm import lake as lk
from cdtm.lake import Lake, LakeError, commit_info
from tests.conftest import REPO

DAY1, DAY2 = "2024-01-01", "2024-01-02"


def scores_frame(spark, ds: str, n: int, offset: int = 0):  # noqa: ANN001, ANN201
    return spark.range(offset, offset + n, numPartitions=3).select(
        F.lit(ds).alias("ds"),
        F.col("id").alias("row_id"),
        (F.col("id") % 3).cast("string").alias("domain"),
        (F.col("id") / (offset + n)).alias("score"),
    )


def write_day(lake: Lake, spark, df, ds: str, name: str = "scores", **kw):  # noqa: ANN001, ANN201
    return lake.write(spark, df, name, mode="overwrite_day", partition_by=["ds"], ds=ds, **kw)


def test_spark_engine_replaces_a_day_links_lineage_and_compacts(spark, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"), engine="spark", schema="t_lineage")
    a1, b = scores_frame(spark, DAY1, 100), scores_frame(spark, DAY2, 40, offset=1000)
    first = write_day(lake, spark, a1, DAY1, commit_metadata={"cdtm.vocab_version": 3})
    write_day(lake, spark, b, DAY2)
    a2 = scores_frame(spark, DAY1, 30, offset=5000)
    res = write_day(lake, spark, a2, DAY1, commit_metadata={"cdtm.vocab_version": 4})
    assert res.rows == 30
    assertDataFrameEqual(lake.read(spark, "scores"), a2.unionByName(b))
    # versionAsOf: the first write's version still holds the first day-1 rows.
    assertDataFrameEqual(lake.read(spark, "scores", first.version), a1)

    # Lineage: in userMetadata (DESCRIBE HISTORY shows it), read back by commit_info, also
    # from the OPTIMIZE version that compacted the write.
    hist = lake.history("scores", spark)
    assert hist[0]["operation"] == "OPTIMIZE"
    writes = [h for h in hist if h["operation"] != "OPTIMIZE"]
    assert json.loads(writes[0]["userMetadata"]) == {"cdtm.vocab_version": 4}
    assert commit_info(lake.path("scores"), lake.version("scores"))["cdtm.vocab_version"] == 4
    assert commit_info(lake.path("scores"), first.version)["cdtm.vocab_version"] == 3
    # Each day written was compacted: 3 tasks wrote 3 files, the live version has 1 per day.
    files = lake.files("scores")
    assert len([f for f in files if f"ds={DAY1}" in f]) == 1
    assert len(files) == 2


def test_spark_engine_refuses_rows_of_another_day(spark, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"), engine="spark", schema=None)
    write_day(lake, spark, scores_frame(spark, DAY1, 10), DAY1)
    version = lake.version("scores")
    with pytest.raises(LakeError, match=f"replaces only ds={DAY1}"):
        write_day(lake, spark, scores_frame(spark, DAY2, 10), DAY1)
    assert lake.version("scores") == version


def test_schema_mismatch_is_refused_by_the_spark_engine(spark, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"), engine="spark", schema=None)
    df = scores_frame(spark, DAY1, 10)
    write_day(lake, spark, df, DAY1)
    with pytest.raises(lk.SchemaMismatchError, match="column 'extra' is not in the table"):
        write_day(lake, spark, df.withColumn("extra", F.lit(1)), DAY1)
    assertDataFrameEqual(lake.read(spark, "scores"), df)


@pytest.mark.parametrize("first,second", [("spark", "delta-rs"), ("delta-rs", "spark")])
def test_each_engine_reads_and_extends_the_others_tables(
    spark, tmp_path: Path, first: str, second: str
) -> None:
    root = str(tmp_path / "lake")
    a, b = Lake(root, engine=first, schema=None), Lake(root, engine=second, schema=None)
    d1, d2 = scores_frame(spark, DAY1, 50), scores_frame(spark, DAY2, 20, offset=100)
    write_day(a, spark, d1, DAY1, commit_metadata={"cdtm.rejects_version": 7})
    assertDataFrameEqual(b.read(spark, "scores"), d1)
    write_day(b, spark, d2, DAY2, commit_metadata={"cdtm.rejects_version": 8})
    for reader in (a, b):
        assertDataFrameEqual(reader.read(spark, "scores"), d1.unionByName(d2))
    # delta-rs SQL (no JVM) and the reader's file list agree with Spark.
    n = a.query("SELECT COUNT(*) AS n FROM scores", ["scores"]).column("n")[0].as_py()
    assert n == 70
    assert commit_info(a.path("scores"), a.version("scores"))["cdtm.rejects_version"] == 8


def test_tables_are_registered_with_comments_and_found_by_name(spark, tmp_path: Path) -> None:
    lake = Lake(str(tmp_path / "lake"), engine="spark", schema="t_names")
    write_day(lake, spark, scores_frame(spark, DAY1, 12), DAY1)
    assert spark.sql("SELECT COUNT(*) AS n FROM t_names.scores").collect()[0]["n"] == 12
    info = {
        r["col_name"]: r["data_type"]
        for r in spark.sql("DESCRIBE TABLE EXTENDED t_names.scores").collect()
    }
    assert info["Type"] == "EXTERNAL"
    assert info["Comment"].startswith("Predicted click probability")
    assert "cdtm.writer=cdtm.scoring (jobs/score.py)" in info["Table Properties"]
    assert "delta.enableDeletionVectors=false" in info["Table Properties"]
    assert info["score"] == "double"
    comments = {
        r["col_name"]: r["comment"] for r in spark.sql("DESCRIBE TABLE t_names.scores").collect()
    }
    assert comments["score"] == "predicted click probability in [0, 1]"

    # Another lake with the same schema: the name follows the lake that wrote last, and the
    # first lake's files are untouched (the registration is external).
    other = Lake(str(tmp_path / "other"), engine="delta-rs", schema="t_names")
    write_day(other, spark, scores_frame(spark, DAY2, 5), DAY2)
    assert spark.sql("SELECT COUNT(*) AS n FROM t_names.scores").collect()[0]["n"] == 5
    assert lake.read(spark, "scores").count() == 12


SESSION_SCRIPT = textwrap.dedent(
    """
    import sys
    from cdtm.config import SparkConf
    from cdtm.spark import build_session

    warehouse, sql = sys.argv[1], sys.argv[2]
    spark = build_session(SparkConf(master="local[1]", warehouse=warehouse,
        conf={"spark.ui.enabled": "false", "spark.driver.host": "127.0.0.1",
              "spark.driver.bindAddress": "127.0.0.1"}))
    if len(sys.argv) > 3:
        from pyspark.sql import functions as F
        from cdtm.lake import Lake
        df = spark.range(21).select(F.lit("2024-01-01").alias("ds"), F.col("id").alias("row_id"))
        Lake(sys.argv[3], engine="spark", schema="cdtm").write(
            spark, df, "scores", mode="overwrite_day", partition_by=["ds"], ds="2024-01-01")
    for row in spark.sql(sql).collect():
        print("ROW", row.asDict())
    """
)


@pytest.mark.spark
def test_a_new_session_finds_the_tables_by_name(tmp_path: Path) -> None:
    """The metastore persists: a second process (a new JVM) queries the name alone."""
    script = tmp_path / "session.py"
    script.write_text(SESSION_SCRIPT)
    warehouse, lake_root = tmp_path / "warehouse", tmp_path / "lake"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPARK_LOCAL_IP": "127.0.0.1"}

    def run(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, str(script), str(warehouse), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    run("SHOW TABLES IN cdtm", str(lake_root))
    out = run("SELECT COUNT(*) AS n FROM cdtm.scores")
    assert "ROW {'n': 21}" in out
    hist = run("DESCRIBE HISTORY cdtm.scores")
    assert "CREATE TABLE AS SELECT" in hist
    assert not (tmp_path / "spark-warehouse").exists()  # nothing in the working directory
    assert not (tmp_path / "metastore_db").exists()


def test_deleted_rows_never_reach_a_file_list_and_vacuum_keeps_live_vectors(
    spark, tmp_path: Path
) -> None:
    """A real DELETE with deletion vectors: the training reader's file list refuses the
    version, delta-rs' vacuum refuses the table, Delta's VACUUM keeps the vector, and purge
    makes the file list right again."""
    lake = Lake(str(tmp_path / "lake"), engine="spark", schema=None)
    df = scores_frame(spark, DAY1, 100).coalesce(1)
    write_day(lake, spark, df, DAY1)
    path = lake.path("scores")
    spark.sql(
        f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors'='true')"
    )
    spark.sql(f"DELETE FROM delta.`{path}` WHERE row_id < 10")
    assert any(p.name.startswith("deletion_vector_") for p in Path(path).iterdir())
    with pytest.raises(LakeError, match="deleted with deletion vectors.*jobs/maintain.py purge"):
        lake.files("scores")
    with pytest.raises(LakeError, match="deletion vectors"):
        Lake(lake.root, engine="delta-rs").vacuum("scores", 0, dry_run=True)
    removed = lake.vacuum("scores", 0, dry_run=False, spark=spark)
    assert not [f for f in removed if "deletion_vector" in f]
    assert lake.read(spark, "scores").count() == 90

    lake.purge_deletion_vectors(spark, "scores")
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(u.removeprefix("file://")).num_rows for u in lake.files("scores"))
    assert rows == 90
    assertDataFrameEqual(lake.read(spark, "scores"), df.where("row_id >= 10"))


SUBMIT_SCRIPT = textwrap.dedent(
    """
    from cdtm.config import SparkConf
    from cdtm.spark import build_session

    spark = build_session(SparkConf(master="local[1]", conf={
        "spark.sql.shuffle.partitions": "8", "spark.sql.session.timeZone": "UTC"}))
    print("PARTITIONS", spark.conf.get("spark.sql.shuffle.partitions"))
    print("TZ", spark.conf.get("spark.sql.session.timeZone"))
    """
)


@pytest.mark.spark
def test_spark_submit_conf_wins_over_the_config(tmp_path: Path) -> None:
    script = tmp_path / "submitted.py"
    script.write_text(SUBMIT_SCRIPT)
    submit = Path(sys.executable).parent / "spark-submit"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    proc = subprocess.run(
        [
            str(submit),
            "--master",
            "local[1]",
            "--conf",
            "spark.driver.host=127.0.0.1",
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            "spark.sql.shuffle.partitions=3",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PARTITIONS 3" in proc.stdout  # the submitter's --conf, not the config's 8
    assert "TZ UTC" in proc.stdout  # a key the submitter left alone comes from the config

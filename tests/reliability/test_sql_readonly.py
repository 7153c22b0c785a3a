"""jobs/sql.py is read-only by construction: attacks that once wrote, deleted or ran commands
are refused before anything runs, on both engines, and the tables are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from cdtm.lake import Lake
from cdtm.sql import SqlRefused, run_sql
from tests.conftest import lake_config
from tests.reliability.helpers import fingerprint

DS = "2024-07-01"


@pytest.fixture(scope="module")
def small_lake(spark, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("sqlro") / "lake"
    cfg = lake_config(root, "synthetic", f"run.ds={DS}")
    lake = Lake.of(cfg.lake)
    scores = spark.range(40).select(
        F.lit(DS).alias("ds"),
        F.col("id").alias("row_id"),
        (F.col("id") % 2).cast("string").alias("domain"),
        (F.col("id") / 40).alias("score"),
    )
    lake.write(spark, scores, "scores", mode="overwrite_day", partition_by=["ds"], ds=DS)
    return cfg, lake


ATTACKS = [
    (
        "COPY (SELECT 1) TO '{root}/scores/_delta_log/00000000000000000009.json' STORED AS JSON",
        "COPY",
    ),
    ("SELECT TRANSFORM(ds) USING 'touch {root}/pwned' FROM cdtm.scores", "TRANSFORM"),
    (
        "INSERT OVERWRITE DIRECTORY '{root}/scores/ds=2024-07-01' SELECT * FROM cdtm.scores",
        "INSERT",
    ),
    ("SELECT * FROM text.`/etc/hostname`", "not a table of the lake"),
    ("SELECT * FROM delta.`{root}/scores`", "not a table of the lake"),
    ("CREATE TABLE x AS SELECT * FROM cdtm.scores", "CREATE"),
    ("SELECT 1; DROP TABLE cdtm.scores", "one statement at a time"),
    ("DROP TABLE cdtm.scores", "DROP"),
    ("DELETE FROM cdtm.scores", "DELETE"),
    ("ADD JAR /tmp/evil.jar", "ADD"),
    ("LOAD DATA INPATH '/etc/hostname' INTO TABLE cdtm.scores", "LOADDATA"),
    ("CACHE TABLE c AS SELECT * FROM cdtm.scores", "CACHE"),
    ("SELECT * FROM other_schema.scores", "not a table of the lake"),
    ("SELECT * FROM cdtm.scores WHERE row_id IN (SELECT row_id FROM secrets)", "not a table"),
]


@pytest.mark.parametrize("engine", ["delta-rs", "spark"])
def test_every_attack_is_refused_and_nothing_changes(
    spark, small_lake, tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, lake = small_lake
    monkeypatch.chdir(tmp_path)  # anything written to the working directory would show here
    before = fingerprint(lake, "scores")
    for sql, kind in ATTACKS:
        with pytest.raises(SqlRefused, match=kind):
            run_sql(spark, cfg, sql.format(root=lake.root), engine)  # type: ignore[arg-type]
    assert fingerprint(lake, "scores") == before
    assert not (Path(lake.root) / "pwned").exists()
    assert list(tmp_path.iterdir()) == []  # no spark-warehouse/, no files


def test_queries_read_by_name_on_both_engines(spark, small_lake) -> None:
    cfg, _ = small_lake
    sql = "SELECT domain, COUNT(*) AS n FROM cdtm.scores GROUP BY domain ORDER BY domain"
    by_rs = run_sql(None, cfg, sql, "delta-rs")
    by_spark = run_sql(spark, cfg, sql, "spark")
    assert (
        by_rs.to_dict("records")
        == by_spark.to_dict("records")
        == [
            {"domain": "0", "n": 20},
            {"domain": "1", "n": 20},
        ]
    )
    bare = run_sql(None, cfg, "SELECT COUNT(*) AS n FROM scores", "delta-rs")
    assert int(bare["n"][0]) == 40
    history = run_sql(spark, cfg, "DESCRIBE HISTORY cdtm.scores", "spark")
    assert "CREATE TABLE AS SELECT" in set(history["operation"])


def test_the_job_exits_2_naming_the_statement(small_lake, capsys: pytest.CaptureFixture) -> None:
    from jobs.sql import main

    cfg, lake = small_lake
    args = ["--config", "conf/local.yaml", "--set", f"lake.root={lake.root}"]
    assert main([*args, "--query", "DROP TABLE cdtm.scores"]) == 2
    assert "sql refused, nothing ran: DROP statements are not allowed" in capsys.readouterr().err

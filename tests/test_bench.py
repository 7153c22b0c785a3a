"""The benchmark harness runs end to end on tiny sizes and its baselines do the same work.

Nothing here times anything: `make bench` does. These tests keep bench/ from rotting and check
that the DuckDB baseline transforms the input as the feature ETL does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

KEYS = (
    "etl.ratio_vs_duckdb",
    "etl.growth_1m_to_4m",
    "reader.ratio_vs_pyarrow",
    "train.feed_ratio",
    "train.peak_rss_mb",
    "train.subnormal_flush_speedup",
    "train.oversubscription_penalty",
    "score.ratio_vs_inprocess",
)


def run_bench(work: Path, stages: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--rows",
            "6000,12000",
            "--only",
            stages,
            "--work",
            str(work),
            "--out",
            str(work / "out"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("bench")
    run_bench(work, "etl,reader,train,memory,score")
    return work


def _get(d: dict, dotted: str) -> object:
    for part in dotted.split("."):
        d = d[part]
    return d


def test_quick_run_writes_every_tracked_key(quick_run: Path) -> None:
    results = json.loads((quick_run / "out" / "latest.json").read_text())
    for key in KEYS:
        value = _get(results, key)
        assert isinstance(value, (int, float)) and value > 0, (key, value)
    # Each ratio sits next to the medians it came from.
    etl = results["etl"]["sizes"]["6000"]
    assert etl["ratio_vs_duckdb"] == pytest.approx(
        etl["duckdb_seconds"] / etl["spark_seconds"], rel=1e-2
    )
    assert results["reader"]["rows"] > 0
    train = results["train"]
    assert train["subnormal_flush_speedup"] == pytest.approx(
        train["steps_per_s_subnormals_flushed"] / train["steps_per_s_subnormals_kept"], rel=2e-2
    )
    assert train["oversubscription_penalty"] == pytest.approx(
        train["samples_per_s_2_processes_auto_threads"]
        / train["samples_per_s_2_processes_default_threads"],
        rel=2e-2,
    )
    assert train["threads_auto_each"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert results["score"]["rows"] == 6000
    summary = (quick_run / "out" / "summary.md").read_text()
    assert "train.feed_ratio" in summary and "| 12,000 |" in summary
    assert (quick_run / "out" / "ratios.png").stat().st_size > 0
    assert (quick_run / "out" / "etl_scaling.png").stat().st_size > 0


def test_duckdb_baseline_produces_the_etl_rows(quick_run: Path) -> None:
    """Per domain: rows, clicks, dense sums and indexed-field presence agree with the ETL's table."""
    import duckdb

    from cdtm.lake import Lake

    lake = Lake(str(quick_run / "lake-12000"))
    fields = [
        c
        for c in lake.query("SELECT * FROM features LIMIT 1", ["features"]).column_names
        if c.startswith("f_")
    ]
    agg = ", ".join(
        ["COUNT(*) AS n", "SUM(label) AS clicks", "ROUND(SUM(dense_hour), 2) AS hour"]
        + [f"SUM(CASE WHEN {f} > 0 THEN 1 ELSE 0 END) AS {f}" for f in fields]
    )
    sql = f"SELECT domain, {agg} FROM {{t}} GROUP BY domain ORDER BY domain"
    ours = lake.query(sql.format(t="features"), ["features"]).to_pylist()
    path = quick_run / "duckdb-12000"
    theirs = duckdb.sql(sql.format(t=f"read_parquet('{path}/*.parquet')")).fetchall()
    assert len(ours) == 4
    assert [
        tuple(int(v) if isinstance(v, int) else float(v) for v in r.values()) for r in ours
    ] == [tuple(int(v) if isinstance(v, int) else float(v) for v in r) for r in theirs]


def test_a_partial_rerun_keeps_the_other_stages_and_says_when_they_ran(quick_run: Path) -> None:
    latest = quick_run / "out" / "latest.json"
    first = json.loads(latest.read_text())
    first["meta"]["stage_dates"]["etl"] = "2000-01-01 00:00 UTC"  # as if from an older run
    latest.write_text(json.dumps(first))
    run_bench(quick_run, "reader")
    second = json.loads(latest.read_text())
    dates = second["meta"]["stage_dates"]
    assert dates["reader"] == second["meta"]["date"]
    assert dates["etl"] == "2000-01-01 00:00 UTC"
    assert dates["train"] == first["meta"]["stage_dates"]["train"]
    assert second["etl"] == first["etl"] and second["train"] == first["train"]
    assert "etl: from the run of 2000-01-01 00:00 UTC" in second["notes"]
    assert f"train, memory, score: from the run of {dates['train']}" in second["notes"]
    assert "quick run of reader, " in (quick_run / "out" / "summary.md").read_text()

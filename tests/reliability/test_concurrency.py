"""Two writers on one table at once, and readers during a write (Delta's snapshot isolation,
kept end to end by our one-commit writer)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cdtm.lake import ConcurrentWriteError, Lake, query, write_table
from tests.reliability.helpers import orphans

DAY, OTHER = "2024-06-01", "2024-06-02"


def frame(spark, tag: str, rows: int, ds: str = DAY):  # noqa: ANN001, ANN201
    return spark.range(rows).selectExpr(f"'{ds}' AS ds", "id", f"'{tag}' AS tag").repartition(2)


ENGINES = ["delta-rs", "spark"]


def replace_day(  # noqa: ANN201
    spark,  # noqa: ANN001
    root: str,
    tag: str,
    rows: int,
    ds: str = DAY,
    retries: int = 0,
    engine: str = "delta-rs",
):
    """Replace day ``ds`` of the table with ``rows`` rows tagged ``tag``."""
    return write_table(
        spark,
        frame(spark, tag, rows, ds),
        root,
        mode="overwrite_day",
        partition_by=["ds"],
        ds=ds,
        commit_retries=retries,
        engine=engine,  # type: ignore[arg-type]
    )


def pending_writes(spark, lake: Lake, table: str, engine: str) -> int:  # noqa: ANN001
    """Writers held before their commit.

    delta-rs: writers whose files are on disk but not committed (files are named
    part-<txn>-...). Spark: jobs submitted (each write's Delta transaction began before its
    job), while 2 tasks (the 2 cores) are held at the end of their rows; Spark sorts a day's
    rows before it writes them, so a held task has written no file yet.
    """
    if engine == "spark":
        tracker = spark.sparkContext.statusTracker()
        jobs = tracker.getActiveJobsIds()
        stages = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
        held = sum(s.numActiveTasks for s in stages if s is not None)
        return len(jobs) if held >= 2 else 0
    return len({f.split("part-")[1][:32] for f in orphans(lake, table)})


def by_tag(root: str, ds: str = DAY) -> dict[str, int]:
    t = query(f"SELECT tag, COUNT(*) AS n FROM t WHERE ds = '{ds}' GROUP BY tag", {"t": root})
    return {r["tag"]: int(r["n"]) for r in t.to_pylist()}


@pytest.fixture
def held_commits(tmp_path: Path) -> Iterator[Path]:
    """Writers in this process wait before their commit until the yielded file exists."""
    go = tmp_path / "go"
    os.environ["CDTM_FAULTS"] = f"lake.before_commit=wait:{go}"
    try:
        yield go
    finally:
        os.environ.pop("CDTM_FAULTS", None)
        go.touch()


def race(writers: dict[str, Callable[[], object]], ready: Callable[[], bool], go: Path) -> dict:
    """Run the writers in threads; release their commits together once ``ready()``."""
    outcome: dict[str, object] = {}

    def run(name: str, fn: Callable[[], object]) -> None:
        try:
            outcome[name] = fn()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            outcome[name] = e

    threads = [threading.Thread(target=run, args=item) for item in writers.items()]
    for t in threads:
        t.start()
    deadline = time.time() + 120
    while not ready():
        assert time.time() < deadline, "the writers never reached their commit"
        time.sleep(0.05)
    go.touch()
    for t in threads:
        t.join(120)
    return outcome


@pytest.mark.parametrize("engine", ENGINES)
def test_two_writers_replacing_one_day_one_wins_the_other_fails_clearly(
    spark, tmp_path: Path, held_commits: Path, engine: str
) -> None:
    root = str(tmp_path / "t")
    os.environ.pop("CDTM_FAULTS")
    replace_day(spark, root, "old", 50, engine=engine)
    os.environ["CDTM_FAULTS"] = f"lake.before_commit=wait:{held_commits}"
    lake = Lake(str(tmp_path))
    sizes = {"a": 70, "b": 90}
    writers = {t: (lambda t=t: replace_day(spark, root, t, sizes[t], engine=engine)) for t in sizes}
    outcome = race(writers, lambda: pending_writes(spark, lake, "t", engine) >= 2, held_commits)
    failed = {k: v for k, v in outcome.items() if isinstance(v, Exception)}
    won = [k for k in outcome if k not in failed]
    assert len(won) == 1 and len(failed) == 1, outcome
    (err,) = failed.values()
    assert isinstance(err, ConcurrentWriteError)
    assert f"day {DAY}" in str(err) and root in str(err) and "lake.commit_retries" in str(err)
    assert by_tag(root) == {won[0]: sizes[won[0]]}  # the winner's day, whole


@pytest.mark.parametrize("engine", ENGINES)
def test_with_retries_both_commit_and_the_day_is_never_mixed(
    spark, tmp_path: Path, held_commits: Path, engine: str
) -> None:
    root = str(tmp_path / "t")
    os.environ.pop("CDTM_FAULTS")
    replace_day(spark, root, "old", 50, engine=engine)
    replace_day(spark, root, "keep", 30, OTHER, engine=engine)
    os.environ["CDTM_FAULTS"] = f"lake.before_commit=wait:{held_commits}"
    lake = Lake(str(tmp_path))
    writers = {
        "a": lambda: replace_day(spark, root, "a", 70, retries=2, engine=engine),
        "b": lambda: replace_day(spark, root, "b", 90, retries=2, engine=engine),
        "other": lambda: replace_day(spark, root, "c", 20, OTHER, retries=2, engine=engine),
    }
    outcome = race(writers, lambda: pending_writes(spark, lake, "t", engine) >= 3, held_commits)
    assert not [k for k, v in outcome.items() if isinstance(v, Exception)], outcome
    assert by_tag(root) in ({"a": 70}, {"b": 90})  # the last committer's day, whole
    # delta-rs also counts a commit to another day as a conflict: with retries it lands whole.
    assert by_tag(root, OTHER) == {"c": 20}


@pytest.mark.parametrize("engine", ENGINES)
def test_readers_during_writes_see_the_old_or_the_new_day_never_a_mix(
    spark, tmp_path: Path, engine: str
) -> None:
    root = str(tmp_path / "t")
    sizes = {"a": 400, "b": 700}
    replace_day(spark, root, "a", sizes["a"], engine=engine)
    seen: list[dict[str, int]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(by_tag(root))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for tag in ["b", "a", "b", "a"]:
            replace_day(spark, root, tag, sizes[tag], engine=engine)
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 10
    assert all(s in ({"a": 400}, {"b": 700}) for s in seen), [s for s in seen if len(s) != 1][:3]
    assert {next(iter(s)) for s in seen} == {"a", "b"}  # reads happened on both sides of commits

"""SIGKILL the ETL and the scoring job while they write: the published tables stay exactly as
they were, the re-run gives the rows of an uninterrupted run, and orphan files are never read
and are removed by vacuum.

Kill points: named fault points (cdtm/faults.py) inside the driver and the executors, plus kills
of the whole process group from outside when the first new data file appears, or after a
random delay (fixed seed).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from cdtm.lake import Lake
from cdtm.maintenance import MaintenanceError, vacuum_lake
from cdtm.spec import published_versions
from tests.conftest import lake_config
from tests.reliability.helpers import (
    after_first_file,
    fingerprint,
    orphans,
    run_job,
)

DS = "2024-05-01"
SYNTH = [
    "dataset.source.synthetic.rows=4000",
    "dataset.source.synthetic.users=300",
    "dataset.source.synthetic.items=200",
]
CONFIGS = [
    "--config",
    "conf/local.yaml",
    "--config",
    "conf/datasets/synthetic.yaml",
    "--config",
    "conf/profiles/tiny.yaml",
]


def sets(*items: str) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def etl_args(lake: Path, seed: int, engine: str) -> list[str]:
    return [
        "jobs/etl.py",
        *CONFIGS,
        *sets(
            f"lake.root={lake}",
            f"lake.engine={engine}",
            f"run.ds={DS}",
            f"dataset.source.synthetic.seed={seed}",
            *SYNTH,
        ),
    ]


# With delta-rs the driver commits files its executors wrote: the driver can be killed between
# the two. With Spark, Delta commits inside save() once every task is done: a task killed at
# the end of its rows (lake.before_commit, held on the executors) fails the job before the
# commit; kills of the whole process group from outside cover the driver mid-commit.
ETL_FAULTS = {
    "delta-rs": [
        (
            "an executor dies after writing its first features file",
            "lake.file_written@features=kill",
        ),
        ("driver killed before committing the new vocabulary", "lake.before_commit@vocab=kill"),
        (
            "driver killed between the features file writes and the commit",
            "lake.before_commit@features=kill",
        ),
    ],
    "spark": [
        ("an executor dies before the new vocabulary's commit", "lake.before_commit@vocab=kill"),
        ("an executor dies before the features commit", "lake.before_commit@features=kill"),
    ],
}
COMMON_ETL_FAULTS = [
    ("driver killed between the vocab and feature_spec commits", "lake.after_commit@vocab=kill"),
    ("driver killed after the rejects commit, before publishing", "etl.before_publish=kill"),
]


@pytest.mark.parametrize("engine", ["delta-rs", "spark"])
def test_etl_killed_at_any_point_leaves_the_published_day_intact(
    spark, tmp_path: Path, engine: str
) -> None:
    from feature_etl.etl import run_etl

    lake_root = tmp_path / "lake"
    # Published before the crashes: day DS from input seed 0.
    cfg_v1 = lake_config(
        lake_root, "synthetic", f"run.ds={DS}", f"lake.engine={engine}", *SYNTH, profile=True
    )
    run_etl(spark, cfg_v1)
    lake = Lake(str(lake_root))
    before = {t: fingerprint(lake, t) for t in ("features", "rejects")}
    linked_before = published_versions(str(lake_root), lake.version("features"))

    # The re-run target: the same two runs of the day (input seeds 0 then 1), uninterrupted, in
    # another lake (the vocabulary keeps the values of both: it only grows).
    cfg_v2 = lambda root: lake_config(  # noqa: E731
        root,
        "synthetic",
        f"run.ds={DS}",
        f"lake.engine={engine}",
        "dataset.source.synthetic.seed=1",
        *SYNTH,
        profile=True,
    )
    reference_root = str(tmp_path / "reference")
    run_etl(
        spark,
        dataclasses.replace(cfg_v1, lake=dataclasses.replace(cfg_v1.lake, root=reference_root)),
    )
    run_etl(spark, cfg_v2(tmp_path / "reference"))
    reference = Lake(reference_root)

    # Fault points: every kill must leave the published day exactly as it was.
    for what, faults in ETL_FAULTS[engine] + COMMON_ETL_FAULTS:
        rc, _ = run_job(etl_args(lake_root, 1, engine), tmp_path / "etl.log", faults=faults)
        assert rc != 0, f"{what}: the job was not stopped"
        assert fingerprint(lake, "features") == before["features"], what
    # Kills from outside while the executors write the new day's files: at the first file, and
    # at random moments after it (which may fall after the commit: then the new day is whole).
    for delay in [0.0, *random.Random(7).sample([0.2, 0.5, 1.0, 2.0, 3.0], 2)]:
        killer = after_first_file(lake, "features", delay)
        rc, killed = run_job(etl_args(lake_root, 1, engine), tmp_path / "etl.log", kill_when=killer)
        now = fingerprint(lake, "features")
        if now == before["features"]:
            continue
        assert now[1:] == fingerprint(reference, "features")[1:], f"kill {delay}s in: a mixed day"
        run_etl(spark, cfg_v1)  # published whole before the kill: put the old day back
        before = {t: fingerprint(lake, t) for t in ("features", "rejects")}
        linked_before = published_versions(str(lake_root), lake.version("features"))

    # Nothing published: the features table has the same version and rows, and still names the
    # vocab, spec and rejects versions it was built with, although the killed runs committed
    # newer ones of those.
    assert fingerprint(lake, "features") == before["features"]
    assert published_versions(str(lake_root), lake.version("features")) == linked_before
    assert fingerprint(lake, "rejects", version=linked_before["rejects"]) == before["rejects"]

    # Killed writers left files behind; no reader sees them.
    left = orphans(lake, "features")
    assert left, "the kill between file writes and commit should leave orphan files"
    read = lake.read(spark, "features")
    assert read.count() == before["features"][1]
    assert not {r[0] for r in read.selectExpr("input_file_name()").distinct().collect()} & {
        "file://" + f for f in left
    }

    # Vacuum: a short retention is refused without --force and deletes nothing.
    cfg = cfg_v1
    with pytest.raises(MaintenanceError, match="below lake.min_vacuum_retention_hours"):
        vacuum_lake(cfg, 0, spark=spark)
    assert orphans(lake, "features") == left
    removed = vacuum_lake(cfg, 0, force=True, spark=spark)
    assert {str(Path(lake.path("features"), f)) for f in removed["features"]} >= left
    assert not orphans(lake, "features")
    # Vacuum logs its own (data-free) commits: same rows, later version.
    assert fingerprint(lake, "features")[1:] == before["features"][1:]

    # The re-run succeeds and gives exactly the uninterrupted run's rows.
    run_etl(spark, cfg_v2(lake_root))
    for table in ("features", "rejects", "vocab"):
        assert fingerprint(lake, table)[1:] == fingerprint(reference, table)[1:], table


def score_args(lake: Path, model: str, engine: str) -> list[str]:
    return [
        "jobs/score.py",
        *CONFIGS,
        *sets(
            f"lake.root={lake}",
            f"lake.engine={engine}",
            f"run.ds={DS}",
            f"artifacts.root={lake.parent / 'artifacts'}",
            f"scoring.model={model}",
        ),
    ]


SCORE_FAULTS = {
    "delta-rs": [
        ("an executor dies after writing its first scores file", "lake.file_written@scores=kill"),
        (
            "driver killed between the scores file writes and the commit",
            "lake.before_commit@scores=kill",
        ),
    ],
    "spark": [("an executor dies before the scores commit", "lake.before_commit@scores=kill")],
}


@pytest.mark.parametrize("engine", ["delta-rs", "spark"])
def test_scoring_killed_at_any_point_leaves_the_scores_intact(
    spark, tmp_path: Path, engine: str
) -> None:
    from cdtm.scoring import score_day
    from cdtm.train.job import train_model
    from feature_etl.etl import run_etl

    lake_root = tmp_path / "lake"
    cfg = lake_config(
        lake_root,
        "synthetic",
        f"run.ds={DS}",
        f"lake.engine={engine}",
        *SYNTH,
        profile=True,
    )
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, enabled=False))
    run_etl(spark, cfg)
    for name, seed in (("m1", 1), ("m2", 2)):
        train_model(
            dataclasses.replace(
                cfg,
                train=dataclasses.replace(
                    cfg.train, seed=seed, model_version=name, max_epochs=1, plots=False
                ),
            )
        )
    lake = Lake(str(lake_root))
    with_model = lambda m: dataclasses.replace(  # noqa: E731
        cfg, scoring=dataclasses.replace(cfg.scoring, model=m)
    )
    volatile = ["scored_at"]

    score_day(spark, with_model("m2"))  # what an uninterrupted re-run must give
    reference = fingerprint(lake, "scores", drop=volatile)
    score_day(spark, with_model("m1"))  # the published day before the crashes
    before = fingerprint(lake, "scores", drop=volatile)
    assert before[2] != reference[2]

    for what, faults in SCORE_FAULTS[engine]:
        rc, _ = run_job(score_args(lake_root, "m2", engine), tmp_path / "score.log", faults=faults)
        assert rc != 0, f"{what}: the job was not stopped"
        assert fingerprint(lake, "scores", drop=volatile) == before, what
    for delay in [0.0, *random.Random(11).sample([0.1, 0.3, 0.6, 1.0, 2.0], 2)]:
        killer = after_first_file(lake, "scores", delay)
        rc, killed = run_job(
            score_args(lake_root, "m2", engine), tmp_path / "score.log", kill_when=killer
        )
        now = fingerprint(lake, "scores", drop=volatile)
        if now == before:
            continue
        assert now[1:] == reference[1:], f"kill {delay}s after the first file: a mixed day"
        score_day(spark, with_model("m1"))  # the new day was whole: put the old one back
        before = fingerprint(lake, "scores", drop=volatile)
    assert fingerprint(lake, "scores", drop=volatile) == before
    assert orphans(lake, "scores")

    score_day(spark, with_model("m2"))
    assert fingerprint(lake, "scores", drop=volatile)[1:] == reference[1:]

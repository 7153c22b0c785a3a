"""What a nightly run needs beyond one day: a training window with the last day held out, and a
champion that a worse challenger does not replace (promote and rollback by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from cdtm.config import load_config
from cdtm.lake import Lake
from cdtm.train.job import window
from tests.conftest import REPO

DAYS = ["2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04", "2024-05-05"]
ROWS = 3000


def test_window_takes_the_stored_days_up_to_ds() -> None:
    stored = ["2024-04-28", "2024-04-30", "2024-05-01", "2024-05-02"]
    assert window(stored, "2024-05-01", None) == stored
    assert window(stored, "2024-05-01", 3) == ["2024-04-30", "2024-05-01"]  # 04-29 not stored
    assert window(stored, "2024-05-02", 1) == ["2024-05-02"]
    with pytest.raises(ValueError, match=r"train.window_days=2: no stored day .* 2024-05-09"):
        window(stored, "2024-05-10", 2)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() -> None:
    from cdtm.drift import psi, score_psi, value_psi

    rng = np.random.default_rng(0)
    ref = np.histogram(rng.normal(0, 1, 20_000), bins=200, range=(-8, 8))[0].astype(float)
    same = np.histogram(rng.normal(0, 1, 20_000), bins=200, range=(-8, 8))[0].astype(float)
    moved = np.histogram(rng.normal(0.8, 1, 20_000), bins=200, range=(-8, 8))[0].astype(float)
    assert score_psi(ref, ref) == 0.0
    assert score_psi(ref, same) < 0.02
    assert score_psi(ref, moved) > 0.4
    assert psi(np.array([50.0, 50.0]), np.array([90.0, 10.0])) == pytest.approx(
        0.4 * np.log(0.9 / 0.5) - 0.4 * np.log(0.1 / 0.5)
    )
    # Values beyond the reference's top ones fall into one bucket: new values show as a shift.
    assert value_psi({1: 60, 2: 40}, {1: 60, 2: 40}) == 0.0
    assert value_psi({1: 60, 2: 40}, {1: 30, 2: 20, 3: 50}) > 1.0


def config(tmp_path: Path, ds: str, *overrides: str):  # noqa: ANN201
    return load_config(
        [
            REPO / "conf" / "local.yaml",
            REPO / "conf" / "datasets" / "synthetic-strong.yaml",
            REPO / "conf" / "profiles" / "tiny.yaml",
        ],
        [
            f"run.ds={ds}",
            f"lake.root={tmp_path / 'lake'}",
            f"artifacts.root={tmp_path / 'art'}",
            "train.backend=single",
            "train.max_epochs=2",
            "dataset.source.synthetic.users=200",
            "dataset.source.synthetic.items=100",
            "train.plots=false",
            "train.window_days=2",
            "etl.split.method=days",
            f"dataset.source.synthetic.rows={ROWS}",
            *overrides,
        ],
    )


def test_a_window_of_days_and_a_champion_a_worse_model_does_not_replace(
    spark, tmp_path: Path
) -> None:
    from cdtm.champion import ChampionError, rollback
    from cdtm.drift import DriftError
    from cdtm.pipeline import run_day
    from cdtm.scoring import resolve_artifact
    from cdtm.train.artifacts import champion
    from cdtm.train.job import LakeData, reader_conf, resolve_inputs
    from feature_etl.etl import run_etl
    from jobs import maintain

    for ds in DAYS[:2]:
        run_etl(spark, config(tmp_path, ds))

    # One day in a 1-day window leaves nothing to train on once it is held out.
    with pytest.raises(ValueError, match=r"holds out the last 1 day\(s\).* has 1 \(2024-05-02\)"):
        resolve_inputs(config(tmp_path, DAYS[1], "train.window_days=1"))

    # The window is the 2 days up to run.ds: the older one trains (every row), the newer one
    # is split between validation and test.
    cfg = config(tmp_path, DAYS[1])
    inputs = resolve_inputs(cfg)
    assert inputs.days == DAYS[:2]
    assert all(f"ds={DAYS[0]}" in f for f in inputs.split_files["train"])
    assert all(f"ds={DAYS[1]}" in f for f in inputs.split_files["valid"])
    data = LakeData(inputs, reader_conf(cfg, inputs.spec))
    counted = {s: sum(len(b) for b in data.eval_batches(s)) for s in ("train", "valid", "test")}
    assert counted["train"] == ROWS
    assert counted["valid"] + counted["test"] == ROWS
    assert 0.3 * ROWS < counted["valid"] < 0.7 * ROWS  # valid:test is 0.1:0.1

    # Night 3: the first model becomes champion.
    first = run_day(spark, config(tmp_path, DAYS[2]))
    assert first["promoted"] is True
    assert first["champion"] == first["challenger"] == first["model_version"]
    assert first["promotion"]["challenger_auc"] > 0.55
    assert "first model" in first["promotion"]["reason"]
    champ = first["champion"]

    # Night 4: a challenger trained on inverted labels is worse on the same rows; the champion
    # scores the night, and the summary says so with both AUCs.
    flipped = "train.flip_labels=[d0,d1,d2,d3]"
    night = run_day(spark, config(tmp_path, DAYS[3], flipped))
    assert night["challenger"] not in (None, champ)
    assert night["promoted"] is False
    assert night["champion"] == night["model_version"] == champ
    p = night["promotion"]
    assert p["champion_auc"] > 0.55 > 0.45 > p["challenger_auc"]
    assert "champion kept" in p["reason"] and p["metric"] == "valid.auc.pooled"
    saved = json.loads((tmp_path / "lake" / "_pipeline" / f"{DAYS[3]}.json").read_text())
    assert saved["champion"] == champ and saved["challenger"] == night["challenger"]
    scores = Lake(str(tmp_path / "lake")).read(spark, "scores").where(F.col("ds") == DAYS[3])
    assert {r["model_version"] for r in scores.select("model_version").distinct().collect()} == {
        champ
    }

    # By hand: promote the challenger, then roll back to the champion it replaced.
    art = tmp_path / "art"
    args = ["--config", str(REPO / "conf" / "local.yaml"), "--set", f"artifacts.root={art}"]
    assert maintain.main(["promote", *args, "--model", night["challenger"]]) == 0
    assert champion(art) == night["challenger"]
    scoring = config(tmp_path, DAYS[3], "scoring.model=champion")
    assert resolve_artifact(scoring).name == night["challenger"]
    assert maintain.main(["rollback", *args]) == 0
    assert champion(art) == champ
    with pytest.raises(ChampionError, match="no earlier champion to roll back to"):
        rollback(scoring)
    assert maintain.main(["promote", *args, "--model", "no-such-model"]) == 1
    assert champion(art) == champ
    assert not night["drift"]["d0"]["flagged"]  # the same generator as the days before
    assert night["drift"]["d0"]["volume_ratio"] == pytest.approx(1.0)
    assert night["drift"]["d0"]["score_psi"] is not None
    assert (tmp_path / "lake" / "_pipeline" / f"{DAYS[3]}-scores.png").stat().st_size > 0

    # Night 5 has a quarter of the events: flagged, and with fail_on_drift the night fails
    # once its summary is written. No challenger (reuse): the champion scores.
    with pytest.raises(DriftError, match=r"d0: volume 0.2\d+x the trailing mean"):
        run_day(
            spark,
            config(
                tmp_path,
                DAYS[4],
                f"dataset.source.synthetic.rows={ROWS // 4}",
                "pipeline.train=reuse",
                "pipeline.fail_on_drift=true",
            ),
        )
    saved = json.loads((tmp_path / "lake" / "_pipeline" / f"{DAYS[4]}.json").read_text())
    assert saved["challenger"] is None and saved["champion"] == champ and not saved["promoted"]
    d0 = saved["drift"]["d0"]
    assert d0["flagged"] and d0["volume_ratio"] == pytest.approx(0.25, abs=0.05)
    assert d0["ctr_ratio"] == pytest.approx(1.0, abs=0.3)

"""Vocabularies never move an index: a backfill with new users every day keeps every day's
rows mapped to their own values; a rebuild over stored days is refused; training refuses days
of different vocabularies; scoring compares the model's vocabulary with the lake's by value."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdtm.config import RunConf, load_config
from cdtm.lake import Lake
from tests.conftest import REPO
from tests.test_validate import dataset

HEADER = "uid,ad,slot,clicked,when,query,tags,price"
DAYS = [f"2024-08-0{d}" for d in range(1, 6)]


def write_day(folder: Path, ds: str, day: int, rows: int = 300) -> None:
    """Each day: 2/3 of the rows from users new that day, 1/3 from users seen on day 1."""
    lines = [HEADER]
    for i in range(rows):
        user = f"d{day}u{i % 40}" if i % 3 else f"d1u{i % 40}"
        lines.append(f"{user},a{i % 25},{'hs'[i % 2]},{i % 2},{ds} 10:00:00,q{i % 5},t,{i % 100}")
    (folder / f"ev-{ds}.csv").write_text("\n".join(lines) + "\n")


def config(tmp_path: Path, ds: str, *overrides: str):  # noqa: ANN201
    cfg = load_config(
        [REPO / "conf" / "local.yaml"], [f"lake.root={tmp_path / 'lake'}", *overrides]
    )
    return dataclasses.replace(
        cfg, dataset=dataset(Path(f"{tmp_path}/in/ev-{{ds}}.csv")), run=RunConf(ds)
    )


def decoded(spark, lake: Lake) -> pd.DataFrame:  # noqa: ANN001
    """Every features row with its uid index read back through the current vocabulary."""
    features = lake.read(spark, "features").select("ds", "user_key", "f_uid")
    vocab = lake.read(spark, "vocab").where("field = 'uid'").selectExpr("value", "index AS f_uid")
    return features.join(vocab, "f_uid", "left").toPandas()


def test_a_backfill_with_new_users_keeps_every_day_mapped_to_its_own_users(
    spark, tmp_path: Path
) -> None:
    from feature_etl.etl import EtlError, run_etl

    (tmp_path / "in").mkdir()
    lake = Lake(str(tmp_path / "lake"))
    indices: dict[str, int] = {}
    for day, ds in enumerate(DAYS, start=1):
        write_day(tmp_path / "in", ds, day)
        run_etl(spark, config(tmp_path, ds))
        vocab = lake.read(spark, "vocab").where("field = 'uid'").toPandas()
        now = dict(zip(vocab["value"], vocab["index"]))
        assert {v: now[v] for v in indices} == indices, f"{ds}: an index moved"
        assert len(now) > len(indices), f"{ds}: the day's new users were not appended"
        indices = now

    rows = decoded(spark, lake)
    known = rows[rows["f_uid"] >= 2]  # OOV (1): users seen only in valid/test rows
    assert set(known["ds"]) == set(DAYS)
    assert (known["value"] == known["user_key"]).all(), known[known["value"] != known["user_key"]]
    assert len(known) >= 0.75 * len(rows)

    # A vocabulary built anew over stored days is refused, and nothing is written.
    version = lake.version("features")
    with pytest.raises(EtlError, match="etl.vocab=build would re-index"):
        run_etl(spark, config(tmp_path, DAYS[0], "etl.vocab=build"))
    assert lake.version("features") == version


def test_training_refuses_days_of_different_vocabularies(spark, tmp_path: Path) -> None:
    from cdtm.train.job import MixedVocabularyError, resolve_inputs
    from feature_etl.etl import run_etl

    (tmp_path / "in").mkdir()
    for day, ds in enumerate(DAYS[:2], start=1):
        write_day(tmp_path / "in", ds, day)
    run_etl(spark, config(tmp_path, DAYS[0]))
    shutil.rmtree(tmp_path / "lake" / "vocab")  # someone dropped the vocabulary
    run_etl(spark, config(tmp_path, DAYS[1]))  # day 2 starts a new one: other indices
    with pytest.raises(MixedVocabularyError, match=f"{DAYS[0]}..{DAYS[0]}.*{DAYS[1]}"):
        resolve_inputs(config(tmp_path, DAYS[1]))


def test_scoring_compares_the_models_vocabulary_by_value(spark, tmp_path: Path) -> None:
    from cdtm.scoring import ScoringError, check_vocab
    from cdtm.train.artifacts import VOCAB_FILE

    lake = Lake(str(tmp_path / "lake"))
    rows = [("uid", "u1", 2, 5), ("uid", "u2", 3, 4), ("uid", "u3", 4, 1)]
    vocab = spark.createDataFrame(rows, "field string, value string, index long, count long")
    version = lake.write(spark, vocab, "vocab", mode="overwrite").version
    artifact = tmp_path / "model"
    artifact.mkdir()

    def model_vocab(pairs: list[tuple[str, int]]) -> None:
        table = pa.table(
            {
                "field": ["uid"] * len(pairs),
                "value": [v for v, _ in pairs],
                "index": pa.array([i for _, i in pairs], pa.int64()),
            }
        )
        pq.write_table(table, artifact / VOCAB_FILE)

    model_vocab([("u1", 2), ("u2", 3)])  # a prefix: the lake appended u3 since
    check_vocab(artifact, lake, version)
    model_vocab([("u2", 2), ("u1", 3), ("u3", 4)])  # same size, indices swapped
    with pytest.raises(ScoringError, match=r"2 of 3 values differ.*uid='u2' \(model 2, lake 3"):
        check_vocab(artifact, lake, version)


def test_rebuild_reindexes_every_stored_day_in_one_commit(spark, tmp_path: Path) -> None:
    """etl.vocab=rebuild: one new vocabulary (ordered by count over all days), every stored
    day rewritten with it in the same commit; every row still reads back as its own user, and
    training sees one generation."""
    from cdtm.spec import day_generations
    from cdtm.train.job import resolve_inputs
    from feature_etl.etl import run_etl

    (tmp_path / "in").mkdir()
    lake = Lake(str(tmp_path / "lake"))
    for day, ds in enumerate(DAYS[:2], start=1):
        write_day(tmp_path / "in", ds, day)
        run_etl(spark, config(tmp_path, ds))
    before = lake.read(spark, "features").toPandas()
    old = lake.read(spark, "vocab").where("field = 'uid'").toPandas()
    version = lake.version("features")

    run_etl(spark, config(tmp_path, DAYS[1], "etl.vocab=rebuild"))
    assert lake.version("features") == version + 1  # every day in one commit
    after = lake.read(spark, "features").toPandas()
    assert len(after) == len(before) and set(after["ds"]) == set(DAYS[:2])
    new = lake.read(spark, "vocab").where("field = 'uid'").toPandas()
    assert set(new["value"]) == set(old["value"])
    assert dict(zip(new["value"], new["index"])) != dict(zip(old["value"], old["index"]))
    rows = decoded(spark, lake)
    known = rows[rows["f_uid"] >= 2]
    assert (known["value"] == known["user_key"]).all()
    merged = before.merge(after, on="row_id", suffixes=("_before", "_after"))
    assert len(merged) == len(before)
    assert ((merged["f_uid_before"] <= 1) == (merged["f_uid_after"] <= 1)).all()  # PAD/OOV kept
    gens = day_generations(lake.root, lake.version("features"))
    assert set(gens) == set(DAYS[:2]) and len(set(gens.values())) == 1
    resolve_inputs(config(tmp_path, DAYS[1]))  # one generation: training accepts the days


def test_an_older_model_scores_a_newer_day_and_seeds_the_next_one(spark, tmp_path: Path) -> None:
    """A model trained before new users arrived scores their rows as out-of-vocabulary (never
    out of range); the next model warm-starts from its rows for the values it knew."""
    import numpy as np
    import torch

    from cdtm.champion import promote
    from cdtm.data.batch import Batch
    from cdtm.scoring import score_day
    from cdtm.spec import OOV_INDEX
    from cdtm.train.artifacts import load_artifact
    from cdtm.train.launch import launch
    from feature_etl.etl import run_etl

    (tmp_path / "in").mkdir()
    train = [
        f"artifacts.root={tmp_path / 'art'}",
        "train.backend=single",
        "train.max_epochs=1",
        "train.plots=false",
        "train.batch_size=128",
        "tracking.enabled=false",
    ]
    write_day(tmp_path / "in", DAYS[0], 1)
    run_etl(spark, config(tmp_path, DAYS[0]))
    old = launch(None, config(tmp_path, DAYS[0], *train)).model_version
    promote(config(tmp_path, DAYS[0], *train), old, "test")
    write_day(tmp_path / "in", DAYS[1], 2)
    run_etl(spark, config(tmp_path, DAYS[1]))

    lake = Lake(str(tmp_path / "lake"))
    model, spec, _ = load_artifact(tmp_path / "art" / old)
    sizes = np.array([f.vocab_size for f in spec.fields])
    report = score_day(spark, config(tmp_path, DAYS[1], *train, "scoring.model=champion"))
    rows = (
        lake.read(spark, "features")
        .where(f"ds = '{DAYS[1]}'")
        .join(lake.read(spark, "scores").select("row_id", "score"), "row_id")
        .toPandas()
    )
    assert report.rows == len(rows) == 300
    fields = rows[[f.column for f in spec.fields]].to_numpy()
    unseen = fields >= sizes
    assert unseen[:, 0].sum() >= 100  # day 2's new users: beyond the model's uid table
    batch = Batch(
        domain=torch.tensor(rows["domain"].to_numpy(), dtype=torch.long),
        label=torch.zeros(len(rows)),
        fields=torch.tensor(np.where(unseen, OOV_INDEX, fields), dtype=torch.long),
        dense=torch.tensor(rows[[d.column for d in spec.dense]].to_numpy(), dtype=torch.float32),
        row_id=torch.zeros(len(rows), dtype=torch.long),
    )
    with torch.no_grad():
        expected = torch.sigmoid(model(batch)).double().numpy()
    np.testing.assert_allclose(rows["score"].to_numpy(), expected, rtol=1e-5)

    # lr 0: the warm-started model is exactly where it started.
    new = launch(
        None,
        config(tmp_path, DAYS[1], *train, "train.warm_start=champion", "train.lr=0"),
    ).model_version
    before, after = model.state_dict(), load_artifact(tmp_path / "art" / new)[0].state_dict()
    grown = 0
    for name, t in before.items():
        n = t.shape[0] if t.dim() else 0
        if after[name].shape != t.shape:
            grown += 1
            assert after[name].shape[0] > n
        torch.testing.assert_close(after[name][:n] if t.dim() else after[name], t)
    assert grown >= 2  # the uid tables grew and kept their older rows


def test_warm_start_refuses_a_rebuilt_vocabulary(tmp_path: Path) -> None:
    from cdtm.train.artifacts import VOCAB_FILE
    from cdtm.train.warm import WarmStartError, _check_prefix

    def table(pairs: list[tuple[str, int]]) -> pa.Table:
        return pa.table(
            {
                "field": ["uid"] * len(pairs),
                "value": [v for v, _ in pairs],
                "index": pa.array([i for _, i in pairs], pa.int64()),
            }
        )

    pq.write_table(table([("u1", 2), ("u2", 3)]), tmp_path / VOCAB_FILE)
    _check_prefix(tmp_path, table([("u1", 2), ("u2", 3), ("u3", 4)]))  # extended: fine
    with pytest.raises(WarmStartError, match=r"2 values .* uid='u1': 2 -> 3.*rebuilt"):
        _check_prefix(tmp_path, table([("u2", 2), ("u1", 3)]))

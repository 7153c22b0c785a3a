"""Candidate scoring: unlabelled rows go through the ETL's validation and the model's own
vocabulary into ``scores``; bad candidates are quarantined with a reason and counts reconcile.
And scoring labelled rows reports AUC and calibration per domain."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pyspark.sql import functions as F

from cdtm.config import RunConf, build, load_config
from cdtm.data.batch import Batch
from cdtm.lake import Lake
from cdtm.spec import OOV_INDEX
from tests.conftest import REPO
from tests.test_validate import SPEC

DS = "2024-09-01"
HEADER = "uid,ad,slot,clicked,when,query,tags,price"
CANDIDATES = """uid,ad,slot,query,tags,price
u3,a4,h,,red,10
u3,a4,s,q2,red,10
newbie,a4,h,,red,10
stranger,a4,h,,red,10
,a4,h,,red,10
u5,a4,x,,red,10
u6,a4,p,,red,10
u7,a4,h,,red,cheap
"""


def dataset(path: str, promo: bool = False):  # noqa: ANN201
    from cdtm.config import DatasetConf

    spec = {**SPEC, "source": {"format": "csv", "path": path}}
    if promo:  # a domain added to the spec after the model was trained
        spec["domain"] = {
            **SPEC["domain"],
            "names": ["home", "search", "promo"],
            "mapping": {"h": "home", "s": "search", "p": "promo"},
        }
    return build(DatasetConf, spec, prefix="dataset")


def config(tmp_path: Path, *overrides: str, promo: bool = False):  # noqa: ANN201
    cfg = load_config(
        [REPO / "conf" / "local.yaml", REPO / "conf" / "profiles" / "tiny.yaml"],
        [
            f"lake.root={tmp_path / 'lake'}",
            f"artifacts.root={tmp_path / 'art'}",
            "train.backend=single",
            "train.plots=false",
            "train.batch_size=64",
            *overrides,
        ],
    )
    ds = dataset(f"{tmp_path}/in/ev-{{ds}}.csv", promo)
    return dataclasses.replace(cfg, dataset=ds, run=RunConf(DS))


def test_candidates_are_validated_indexed_with_the_models_vocabulary_and_scored(
    spark, tmp_path: Path
) -> None:
    from cdtm.scoring import score_day
    from cdtm.train.artifacts import load_artifact
    from cdtm.train.launch import launch
    from feature_etl.candidates import CANDIDATE_REJECTS, score_candidates
    from feature_etl.etl import run_etl

    (tmp_path / "in").mkdir()
    lines = [HEADER] + [
        f"u{i % 9},a{i % 5},{'hs'[i % 2]},{(i * 7 % 3) // 2},{DS} 10:00:00,q{i % 3},red,{i % 90}"
        for i in range(600)
    ]
    (tmp_path / "in" / f"ev-{DS}.csv").write_text("\n".join(lines) + "\n")
    run_etl(spark, config(tmp_path))
    version = launch(None, config(tmp_path)).model_version
    lake = Lake(str(tmp_path / "lake"))

    # Labelled rows: the report evaluates the scores against the labels.
    labelled = score_day(spark, config(tmp_path, f"scoring.model={version}"))
    assert set(labelled.auc_per_domain or {}) == {"pooled", "home", "search"}
    joined = (
        lake.read(spark, "scores")
        .join(lake.read(spark, "features"), ["ds", "row_id"])
        .agg(F.sum("score").alias("s"), F.sum("label").alias("y"))
        .first()
    )
    assert labelled.calibration_per_domain["pooled"] == pytest.approx(joined["s"] / joined["y"])

    cand = tmp_path / "cand.csv"
    cand.write_text(CANDIDATES)
    cfg = config(
        tmp_path,
        f"scoring.model={version}",
        f"scoring.candidates={{format: csv, path: '{cand}'}}",
        promo=True,
    )
    report = score_candidates(spark, cfg)
    assert report.input_rows == 8
    assert report.rejected == {
        "missing_field": 1,
        "unknown_domain": 1,
        "bad_value": 1,
        "domain_not_in_model": 1,
    }
    assert report.rows == 4 and report.rows_per_domain == {"home": 3, "search": 1}
    rejects = lake.read(spark, CANDIDATE_REJECTS).where(F.col("ds") == DS).collect()
    assert sorted((r["reason"], r["field"]) for r in rejects) == [
        ("bad_value", "price"),
        ("domain_not_in_model", "slot"),
        ("missing_field", "uid"),
        ("unknown_domain", "slot"),
    ]
    scores = {
        (r["user_key"], r["domain"]): r["score"]
        for r in lake.read(spark, "scores").where(F.col("ds") == DS).collect()
    }
    assert set(scores) == {
        ("u3", "home"),
        ("u3", "search"),
        ("newbie", "home"),
        ("stranger", "home"),
    }
    # Two users the model never saw are the same out-of-vocabulary user to it.
    assert scores[("newbie", "home")] == pytest.approx(scores[("stranger", "home")])

    # The stored score is the model's forward pass over the values indexed by hand through
    # the vocabulary the model carries.
    model, spec, _ = load_artifact(Path(report.artifact))
    vocab = pq.read_table(Path(report.artifact) / "vocab.parquet").to_pandas()
    index = {(r.field, r.value): int(r.index) for r in vocab.itertuples()}
    values = {"uid": "u3", "ad": "a4", "query": None, "tags": "red"}
    fields = [
        0 if values[f.name] is None else index.get((f.name, values[f.name]), OOV_INDEX)
        for f in spec.fields
    ]
    assert fields[0] > OOV_INDEX  # u3 is known
    batch = Batch(
        domain=torch.tensor([0]),
        label=torch.zeros(1),
        fields=torch.tensor([fields]),
        dense=torch.tensor([[0.1]], dtype=torch.float32),
        row_id=torch.zeros(1, dtype=torch.long),
    )
    with torch.no_grad():
        expected = float(torch.sigmoid(model(batch))[0])
    assert scores[("u3", "home")] == pytest.approx(expected, rel=1e-5)
    assert not np.isclose(scores[("u3", "home")], scores[("newbie", "home")], rtol=0, atol=1e-9)

    # The same candidates from a Delta table that holds two days: only run.ds's are scored.
    table = str(tmp_path / "cand_delta")
    rows = spark.read.option("header", True).csv(str(cand))
    both = rows.withColumn("ds", F.lit(DS)).unionByName(rows.withColumn("ds", F.lit("2024-09-02")))
    both.write.format("delta").save(table)
    cfg = config(
        tmp_path,
        f"scoring.model={version}",
        f"scoring.candidates={{format: delta, path: '{table}'}}",
        promo=True,
    )
    again = score_candidates(spark, cfg)
    assert again.input_rows == 8 and again.rejected == report.rejected
    rescored = {
        (r["user_key"], r["domain"]): r["score"]
        for r in lake.read(spark, "scores").where(F.col("ds") == DS).collect()
    }
    assert rescored.keys() == scores.keys()
    assert all(rescored[k] == pytest.approx(scores[k]) for k in scores)

    # And from a metastore table over it.
    spark.sql(f"CREATE TABLE IF NOT EXISTS candidates_t USING DELTA LOCATION '{table}'")
    try:
        cfg = config(
            tmp_path,
            f"scoring.model={version}",
            "scoring.candidates={format: table, table: candidates_t}",
            promo=True,
        )
        assert score_candidates(spark, cfg).rows == report.rows
    finally:
        spark.sql("DROP TABLE IF EXISTS candidates_t")

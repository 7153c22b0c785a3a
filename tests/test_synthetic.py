from __future__ import annotations

import dataclasses

import numpy as np
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdtm.config import SyntheticConf
from feature_etl.synthetic import _rows, _World, dataset_spec, generate, uniform


def test_uniform_is_deterministic_and_uniform() -> None:
    ids = np.arange(200_000)
    u = uniform(ids, seed=3, salt=1)
    assert np.array_equal(u, uniform(ids, seed=3, salt=1))
    assert not np.array_equal(u, uniform(ids, seed=4, salt=1))
    assert 0.0 <= u.min() and u.max() < 1.0
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts / len(u) - 0.1) < 0.005)
    assert abs(np.corrcoef(u, uniform(ids, seed=3, salt=2))[0, 1]) < 0.01


def test_rows_depend_on_id_not_on_batching() -> None:
    conf = SyntheticConf(rows=1000, domains=3, seed=1)
    world = _World(conf)
    whole = _rows(conf, np.arange(1000), world)
    halves = [_rows(conf, np.arange(0, 400), world), _rows(conf, np.arange(400, 1000), world)]
    assert whole.equals(__import__("pandas").concat(halves, ignore_index=True))


def test_domains_differ_and_target_is_sparse() -> None:
    conf = SyntheticConf(rows=60_000, domains=4, seed=0, target_share=0.05, domain_shift=1.0)
    df = _rows(conf, np.arange(conf.rows), _World(conf))
    share = df["domain"].value_counts(normalize=True)
    assert abs(share["d3"] - 0.05) < 0.01 and abs(share["d0"] - 0.95 / 3) < 0.02
    ctr = df.assign(c=df["click"].astype(int)).groupby("domain")["c"].mean()
    assert ctr.max() - ctr.min() > 0.02  # per-domain bias and transform change the click rate
    # Field sets: ctx_d<k> only in domain k, user_group only in even domains.
    assert (
        df.loc[df["domain"] != "d1", "ctx_d1"].isna().all()
        and df.loc[df["domain"] == "d1", "ctx_d1"].notna().all()
    )
    assert df.loc[df["domain"].isin(["d1", "d3"]), "user_group"].isna().all()
    spec = dataset_spec(conf)
    assert {f.name for f in spec.fields if f.transferable} == {
        "user_id",
        "item_id",
        "item_cat",
        "user_group",
    }


def test_generate_in_spark_is_partition_independent(spark) -> None:
    a = generate(spark, SyntheticConf(rows=3000, domains=3, seed=5, partitions=2))
    b = generate(spark, SyntheticConf(rows=3000, domains=3, seed=5, partitions=5))
    assert a.count() == 3000
    assertDataFrameEqual(a, b)
    c = generate(spark, SyntheticConf(rows=3000, domains=3, seed=6, partitions=2))
    assert a.join(c, ["event_id", "user_id", "item_id"]).count() < 300  # another seed, other rows
    assert a.select(F.countDistinct("event_id")).first()[0] == 3000


def test_unrelated_domain_changes_only_its_own_clicks() -> None:
    base = SyntheticConf(rows=20_000, domains=4, seed=0)
    alien = dataclasses.replace(base, unrelated_domains=1)
    a = _rows(base, np.arange(base.rows), _World(base))
    b = _rows(alien, np.arange(alien.rows), _World(alien))
    d0 = a["domain"] == "d0"
    assert a.loc[~d0].equals(b.loc[~d0])  # every other domain's events stay exactly the same
    assert a.drop(columns="click").equals(b.drop(columns="click"))
    # d0's clicks no longer follow the shared factors: p_u . q_i ranks them no better than chance.
    from sklearn.metrics import roc_auc_score

    world = _World(base)
    users = a.loc[d0, "user_id"].str[1:].astype(int).to_numpy()
    items = a.loc[d0, "item_id"].str[1:].astype(int).to_numpy()
    shared = np.sum(world.p[users] * world.q[items], axis=1)
    related = roc_auc_score(a.loc[d0, "click"].astype(int), shared)
    unrelated = roc_auc_score(b.loc[d0, "click"].astype(int), shared)
    assert related > 0.6 and abs(unrelated - 0.5) < 0.03, (related, unrelated)


def test_disjoint_fields_share_nothing_between_target_and_sources() -> None:
    conf = SyntheticConf(rows=1000, domains=4, shared_fields=False)
    spec = dataset_spec(conf)
    target = [f for f in spec.fields if "d3" in (f.domains or [])]
    sources = [f for f in spec.fields if set(f.domains or []) & {"d0", "d1", "d2"}]
    assert target and sources and not {f.name for f in target} & {f.name for f in sources}
    assert not any(f.transferable for f in target)  # the target has no field to transfer
    assert {f.name for f in sources if f.transferable} == {
        "user_id_s",
        "item_id_s",
        "item_cat_s",
        "user_group_s",
    }
    assert {f.source_column for f in target} >= {"user_id", "item_id"}  # same raw columns

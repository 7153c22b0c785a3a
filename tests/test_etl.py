"""The feature ETL end to end on real data (MovieLens) and on synthetic data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdtm.config import Config, load_config
from cdtm.lake import Lake, query
from feature_etl.etl import EtlError, read_spec, readback_check, run_etl
from tests.conftest import lake_config

REPO = Path(__file__).resolve().parents[1]


def config(lake_root: Path, dataset: str, *overrides: str) -> Config:
    return lake_config(lake_root, dataset, *overrides)


def ml100k_expected(data: Path) -> pd.DataFrame:
    """Independent reading of the raw files with pandas: domain and label per rating."""
    inter = pd.read_csv(data / "movielens-100k" / "ml-100k.inter", sep="\t")
    users = pd.read_csv(data / "movielens-100k" / "ml-100k.user", sep="\t")
    df = inter.merge(users, on="user_id:token")
    df["domain"] = pd.cut(df["age:token"], [-1, 24.5, 34.5, 200], labels=[0, 1, 2]).astype(int)
    df["label"] = (df["rating:float"] >= 4).astype(int)
    return df


def test_movielens_100k_counts_reconcile_with_raw_files(spark, ml100k, movielens_dir: Path) -> None:
    cfg, report = ml100k
    expected = ml100k_expected(movielens_dir)
    assert report.input_rows == len(expected) == report.accepted_rows
    assert report.rejected_rows == 0
    assert report.domain_rows == {
        str(d): int(n) for d, n in expected.groupby("domain").size().items()
    }
    assert sum(report.split_rows.values()) == len(expected)
    assert 0.78 < report.split_rows["train"] / len(expected) < 0.82

    lake = Lake(cfg.lake.root)
    features = lake.read(spark, "features")
    positives = {
        r["domain"]: r["p"]
        for r in features.groupBy("domain").agg(F.sum("label").alias("p")).collect()
    }
    assert positives == {
        int(d): int(n) for d, n in expected.groupby("domain")["label"].sum().items()
    }
    # No duplicates: each (user, title, time) appears as often as in the raw file. Titles are not
    # unique in ML-100K, so the item side table has repeated keys that must not multiply rows.
    keys = ["user_id:token", "item_id:token", "timestamp:float"]
    assert features.select("user_key", "item_key", "ts").distinct().count() == len(
        expected[keys].drop_duplicates()
    )
    assert features.count() == len(expected)


def test_movielens_100k_feature_indices_follow_the_spec(spark, ml100k) -> None:
    cfg, _ = ml100k
    lake = Lake(cfg.lake.root)
    spec = read_spec(spark, lake)
    assert spec.domains == ("0", "1", "2")
    assert [f.column for f in spec.fields] == [
        "f_user_id",
        "f_movie_id",
        "f_gender",
        "f_occupation",
        "f_zip",
        "f_genre",
    ]
    assert all(f.transferable for f in spec.fields)
    features = lake.read(spark, "features")
    bounds = features.agg(
        *[F.min(f.column).alias(f"lo_{f.name}") for f in spec.fields],
        *[F.max(f.column).alias(f"hi_{f.name}") for f in spec.fields],
    ).first()
    for f in spec.fields:
        assert bounds[f"lo_{f.name}"] >= 1  # every MovieLens row has every field: no PAD
        assert bounds[f"hi_{f.name}"] == f.vocab_size - 1
    # Train rows never map to OOV (the vocabulary is built from them, min_count 1).
    assert features.where((F.col("split") == "train") & (F.col("f_user_id") == 1)).count() == 0
    # The vocab table maps back: the most frequent gender in training rows is index 2.
    top = (
        features.where("split = 'train'")
        .groupBy("f_gender")
        .count()
        .orderBy(F.desc("count"))
        .first()
    )
    assert top["f_gender"] == 2
    dense = features.agg(F.min("dense_age"), F.max("dense_age")).first()
    assert 0.0 <= dense[0] < dense[1] <= 1.0


def test_features_read_identically_through_spark_and_delta_rs(spark, ml100k) -> None:
    cfg, _ = ml100k
    lake = Lake(cfg.lake.root)
    via_spark = lake.read(spark, "features").toPandas().sort_values("row_id").reset_index(drop=True)
    via_rs = query("SELECT * FROM f", {"f": lake.path("features")}).to_pandas()
    via_rs = via_rs.sort_values("row_id").reset_index(drop=True)[via_spark.columns]
    pd.testing.assert_frame_equal(via_spark, via_rs, check_dtype=False)
    assert len(via_spark) == 100_000
    check = readback_check(spark, lake, "features", lake.version("features"))
    assert check["domains"] == 3 and check["aggregates"] > 30


def test_rerun_of_a_day_replaces_it_identically(spark, ml100k) -> None:
    cfg, first = ml100k
    lake = Lake(cfg.lake.root)
    v_before = lake.version("features")
    second = run_etl(spark, cfg)
    assert second.versions["features"] == v_before + 1
    assert second.input_rows == first.input_rows and second.domain_rows == first.domain_rows
    assertDataFrameEqual(lake.read(spark, "features", v_before), lake.read(spark, "features"))
    assert lake.read(spark, "features").count() == first.accepted_rows


def test_synthetic_etl_domains_fields_and_target(spark, tmp_path: Path) -> None:
    cfg = config(
        tmp_path / "lake",
        "synthetic",
        "dataset.source.synthetic.rows=20000",
        "dataset.source.synthetic.domains=4",
    )
    report = run_etl(spark, cfg)
    assert report.input_rows == report.accepted_rows == 20000
    assert list(report.domain_rows) == ["d0", "d1", "d2", "d3"]
    assert 0.03 < report.domain_rows["d3"] / 20000 < 0.07  # sparse target, 5% by default
    lake = Lake(cfg.lake.root)
    spec = read_spec(spark, lake)
    assert spec.field("ctx_d1").domains == ("d1",) and not spec.field("ctx_d1").transferable
    assert (
        spec.field("user_group").domains == ("d0", "d2") and spec.field("user_group").transferable
    )
    f = lake.read(spark, "features")
    # A field the row's domain lacks is PAD (0); one it has never is.
    per_domain = {
        r["domain"]: r
        for r in f.groupBy("domain")
        .agg(
            F.max("f_ctx_d1").alias("ctx1"),
            F.min("f_ctx_d1").alias("ctx1_min"),
            F.max("f_user_group").alias("grp"),
        )
        .collect()
    }
    assert per_domain[1]["ctx1_min"] >= 1
    assert per_domain[0]["ctx1"] == per_domain[2]["ctx1"] == 0
    assert per_domain[1]["grp"] == per_domain[3]["grp"] == 0 and per_domain[0]["grp"] > 0
    assert f.select("row_id").distinct().count() == 20000


def test_too_many_rejects_fails_and_writes_no_features(spark, tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(
        "user,item,dom,click,t\n"
        "u1,i1,a,1,1700000000\nu2,i2,b,0,1700000001\nu3,i3,zz,1,1700000002\nu4,i4,a,maybe,1700000003\n"
    )
    spec = tmp_path / "shop.yaml"
    spec.write_text(
        f"""dataset:
  name: shop
  source: {{format: csv, path: "{events}"}}
  label: {{column: click}}
  domain: {{column: dom, names: [a, b]}}
  timestamp: {{column: t}}
  keys: {{user: user, item: item}}
  fields: [{{name: user, transferable: true}}, {{name: item}}]
"""
    )
    cfg = load_config([REPO / "conf" / "local.yaml", spec], [f"lake.root={tmp_path / 'lake'}"])
    with pytest.raises(
        EtlError,
        match=r"50\.00% of 4 input rows rejected.*unknown_domain=1.*bad_label=1|50\.00% of 4 input rows rejected.*bad_label=1",
    ):
        run_etl(spark, cfg)
    lake = Lake(cfg.lake.root)
    assert not lake.exists("features")
    rejects = lake.read(spark, "rejects").select("reason", "field", "source_file")
    assertDataFrameEqual(
        rejects,
        spark.createDataFrame(
            [
                ("unknown_domain", "dom", f"file://{events}"),
                ("bad_label", "click", f"file://{events}"),
            ],
            "reason string, field string, source_file string",
        ),
    )
    # Allowed with a higher threshold: 2 accepted + 2 rejected.
    cfg = load_config(
        [REPO / "conf" / "local.yaml", spec],
        [f"lake.root={tmp_path / 'lake'}", "etl.max_reject_rate=0.6"],
    )
    report = run_etl(spark, cfg)
    assert (
        report.accepted_rows,
        report.rejected["unknown_domain"],
        report.rejected["bad_label"],
    ) == (2, 1, 1)


@pytest.mark.parametrize(
    "dataset, expected",
    [
        # The Scenario-Wise-Rec benchmark's published domain sizes (see shared design MODEL.md).
        ("movielens-1m", {"0": 210_747, "1": 395_556, "2": 393_906}),
        # By the movie's first genre: the sizes the README and the spec file give.
        (
            "movielens-1m-genres",
            {"drama": 208_627, "comedy": 276_923, "action": 337_082, "other": 177_577},
        ),
    ],
)
def test_movielens_1m_domain_sizes(
    spark, movielens_dir: Path, tmp_path: Path, monkeypatch, dataset: str, expected: dict
) -> None:
    if not (movielens_dir / "movielens-1m" / "ml-1m.inter").is_file():
        pytest.skip("MovieLens-1M not found")
    monkeypatch.setenv("CDTM_DATA_DIR", str(movielens_dir))
    report = run_etl(spark, config(tmp_path / "lake", dataset))
    assert report.domain_rows == expected
    assert report.input_rows == report.accepted_rows == 1_000_209


def test_vocab_reuse_indexes_a_new_day_with_the_stored_vocabulary(spark, ml100k) -> None:
    cfg, _ = ml100k
    lake = Lake(cfg.lake.root)
    vocab_version = lake.version("vocab")
    day2 = lake_config(
        Path(cfg.lake.root), "movielens-100k", "run.ds=2024-03-02", "etl.vocab=reuse"
    )
    report = run_etl(spark, day2)
    assert report.versions["vocab"] == vocab_version == lake.version("vocab")  # not rebuilt
    features = lake.read(spark, "features")
    assert {r["ds"] for r in features.select("ds").distinct().collect()} == {
        "2024-03-01",
        "2024-03-02",
    }
    # The same raw row gets the same indices on both days.
    cols = ["row_id", "f_user_id", "f_movie_id", "f_zip"]
    a = features.where("ds = '2024-03-01'").select(*cols)
    b = features.where("ds = '2024-03-02'").select(*cols)
    assertDataFrameEqual(a, b)


def test_domains_by_first_genre_and_a_spec_without_timestamp(
    spark, movielens_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """Domains that differ (items disjoint, users shared), picked by the first token of a
    multi-valued column, from a spec that declares no timestamp: random split only."""
    import yaml

    monkeypatch.setenv("CDTM_DATA_DIR", str(movielens_dir))
    spec = yaml.safe_load((REPO / "conf" / "datasets" / "movielens-1m-genres.yaml").read_text())
    ds = spec["dataset"]
    ds["name"] = "ml100k-genres"
    for part in (ds["source"], *ds["source"]["joins"]):
        part["path"] = part["path"].replace("movielens-1m/ml-1m", "movielens-100k/ml-100k")
    ds["domain"]["column"] = "class"
    ds["domain"]["mapping"]["unknown"] = "other"
    del ds["timestamp"]
    ds["fields"] = [f for f in ds["fields"] if f["name"] != "age_band"]
    path = tmp_path / "genres.yaml"
    path.write_text(yaml.safe_dump(spec))
    files = [REPO / "conf" / "local.yaml", path]
    lake = tmp_path / "lake"
    cfg = load_config(files, [f"lake.root={lake}"])

    report = run_etl(spark, cfg)
    # An independent count: each rating's movie's first genre (CRLF line ends stripped).
    inter = pd.read_csv(movielens_dir / "movielens-100k" / "ml-100k.inter", sep="\t")
    items = pd.read_csv(movielens_dir / "movielens-100k" / "ml-100k.item", sep="\t")
    first = items["class:token_seq"].str.strip().str.split(" ").str[0]
    genre = dict(zip(items["item_id:token"], first.map(ds["domain"]["mapping"])))
    expected = inter["item_id:token"].map(genre).value_counts().to_dict()
    assert report.domain_rows == expected and report.accepted_rows == len(inter)
    rows = query(
        "SELECT domain, COUNT(DISTINCT item_key) AS items, COUNT(ts) AS ts FROM f GROUP BY domain",
        {"f": str(lake / "features")},
    ).to_pylist()
    assert all(r["ts"] == 0 for r in rows)  # no timestamp declared: ts is null
    # Items are disjoint between domains: their item counts add up to all rated items.
    assert sum(r["items"] for r in rows) == inter["item_id:token"].nunique()

    timed = load_config(files, [f"lake.root={tmp_path / 'lake2'}", "etl.split.method=time"])
    with pytest.raises(EtlError, match="declares no timestamp"):
        run_etl(spark, timed)

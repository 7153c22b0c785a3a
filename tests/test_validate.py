"""Validation, quarantine reasons and vocabularies on hand-made inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdtm.config import DatasetConf, LabelConf, build
from feature_etl.sources import read_events
from feature_etl.validate import validate
from feature_etl.vocab import apply_vocab, build_vocab

SPEC = {
    "name": "shop",
    "source": {"format": "csv", "path": "PLACEHOLDER"},
    "label": {"column": "clicked"},
    "domain": {
        "column": "slot",
        "names": ["home", "search"],
        "mapping": {"h": "home", "s": "search"},
    },
    "timestamp": {"column": "when", "format": "yyyy-MM-dd HH:mm:ss"},
    "keys": {"user": "uid", "item": "ad"},
    "fields": [
        {"name": "uid", "transferable": True, "required": True},
        {"name": "ad", "transferable": True, "required": True},
        {"name": "query", "domains": ["search"]},
        {"name": "tags", "token_sep": "|"},
    ],
    "dense": [{"name": "price", "min": 0, "max": 100}],
}

CSV = """uid,ad,slot,clicked,when,query,tags,price
u1,a1,h,1,2024-01-01 10:00:00,ignored,red|big,50
u2,a2,s,0,2024-01-01 11:00:00,shoes,blue,150
u3,a1,s,1,2024-01-01 12:00:00,,,
,a1,h,1,2024-01-01 12:00:00,q,t,1
u4,a1,x,1,2024-01-01 12:00:00,q,t,1
u5,a1,h,yes,2024-01-01 12:00:00,q,t,1
u6,a1,h,1,not a time,q,t,1
u7,a1,h,1,2024-01-01 12:00:00,q,t,cheap
u8,a1,h
u9,a1,s,1,2024-01-01 13:00:00,boots,green|small,-5
"""


def dataset(path: Path | str) -> DatasetConf:
    spec = {**SPEC, "source": {"format": "csv", "path": str(path)}}
    return build(DatasetConf, spec, prefix="dataset")


def test_reasons_parsed_values_and_raw_rows(spark, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(CSV)
    ds = dataset(path)
    out = validate(read_events(spark, ds, "2024-01-01"), ds)
    got = out.select(
        "user_key",
        "_reason",
        "_field",
        "domain",
        "label",
        "ts",
        "_v_query",
        "_v_tags",
        "dense_price",
    )
    ts = lambda h: 1704067200 + h * 3600  # noqa: E731
    expected = spark.createDataFrame(
        [
            ("u1", None, None, 0, 1, ts(10), None, "red", 0.5),  # query: home lacks the field
            ("u2", None, None, 1, 0, ts(11), "shoes", "blue", 1.0),  # price clipped to 1
            ("u3", None, None, 1, 1, ts(12), None, None, 0.0),  # empty optional values -> absent
            (None, "missing_field", "uid", 0, 1, ts(12), None, "t", 0.01),
            ("u4", "unknown_domain", "slot", None, 1, ts(12), None, "t", 0.01),
            ("u5", "bad_label", "clicked", 0, None, ts(12), None, "t", 0.01),
            ("u6", "bad_timestamp", "when", 0, 1, None, None, "t", 0.01),
            ("u7", "bad_value", "price", 0, 1, ts(12), None, "t", 0.0),
            ("u8", "malformed_row", None, 0, None, None, None, None, 0.0),
            ("u9", None, None, 1, 1, ts(13), "boots", "green", 0.0),  # price clipped to 0
        ],
        "user_key string, _reason string, _field string, domain int, label int, ts long, "
        "_v_query string, _v_tags string, dense_price float",
    )
    assertDataFrameEqual(got, expected)
    raw = {r["user_key"]: r["_raw"] for r in out.select("user_key", "_raw").collect()}
    assert raw["u8"] == "u8,a1,h"  # the malformed line as it came
    assert '"price":"cheap"' in raw["u7"]
    assert {r["_file"] for r in out.select("_file").collect()} == {f"file://{path}"}


def test_one_domain_per_input_file(spark, tmp_path: Path) -> None:
    (tmp_path / "home.csv").write_text(
        "uid,ad,clicked,when\nu1,a1,1,2024-01-01 00:00:00\nu2,a2,0,2024-01-01 00:00:01\n"
    )
    (tmp_path / "search.csv").write_text("uid,ad,clicked,when\nu3,a1,1,2024-01-01 00:00:02\n")
    spec = {
        **SPEC,
        "source": {
            "format": "csv",
            "files": {str(tmp_path / "home.csv"): "home", str(tmp_path / "search.csv"): "search"},
        },
        "domain": {"names": ["home", "search"]},
        "fields": [{"name": "uid", "transferable": True}, {"name": "ad"}],
        "dense": [],
    }
    ds = build(DatasetConf, spec, prefix="dataset")
    out = validate(read_events(spark, ds, "2024-01-01"), ds).select("user_key", "domain", "_reason")
    expected = [("u1", 0, None), ("u2", 0, None), ("u3", 1, None)]
    assertDataFrameEqual(
        out, spark.createDataFrame(expected, "user_key string, domain int, _reason string")
    )


def test_vocab_min_count_order_pad_and_oov(spark) -> None:
    fields = build(
        DatasetConf,
        {
            **SPEC,
            "fields": [
                {"name": "uid"},
                {"name": "ad", "min_count": 2},
                {"name": "query", "hash_buckets": 10},
            ],
        },
        prefix="dataset",
    ).fields
    train = spark.createDataFrame(
        [
            ("u1", "a1", "q"),
            ("u1", "a2", None),
            ("u2", "a1", "q"),
            ("u3", "a3", "r"),
            ("u3", "a1", None),
        ],
        "_v_uid string, _v_ad string, _v_query string",
    )
    vocab = build_vocab(train, fields, min_count=1)
    expected = spark.createDataFrame(
        [("uid", "u1", 2, 2), ("uid", "u3", 3, 2), ("uid", "u2", 4, 1), ("ad", "a1", 2, 3)],
        "field string, value string, index long, count long",
    )
    assertDataFrameEqual(vocab, expected)
    rows = spark.createDataFrame(
        [("u3", "a2", "q"), ("u9", None, None), ("u1", "a1", "zz")],
        "_v_uid string, _v_ad string, _v_query string",
    )
    indexed = apply_vocab(rows, vocab, fields)
    got = {r["_v_uid"]: (r["f_uid"], r["f_ad"], r["f_query"]) for r in indexed.collect()}
    q_hash = indexed.where(F.col("_v_uid") == "u3").select("f_query").first()[0]
    assert 2 <= q_hash < 12
    assert got["u3"] == (3, 1, q_hash)  # a2 seen once < min_count 2 -> OOV
    assert got["u9"] == (1, 0, 0)  # unseen user -> OOV, absent values -> PAD
    assert got["u1"][:2] == (2, 2)


def test_non_finite_ratings_and_prices_are_rejected(spark, tmp_path: Path) -> None:
    """'inf' and '1e400' parse as infinity: no click, no price; rejected with the field named."""
    path = tmp_path / "events.csv"
    path.write_text(
        "uid,ad,slot,clicked,when,query,tags,price\n"
        "u1,a1,h,5,2024-01-01 10:00:00,,t,50\n"
        "u2,a1,h,1e400,2024-01-01 10:00:00,,t,50\n"
        "u3,a1,h,inf,2024-01-01 10:00:00,,t,50\n"
        "u4,a1,h,-inf,2024-01-01 10:00:00,,t,50\n"
        "u5,a1,h,4,2024-01-01 10:00:00,,t,inf\n"
        "u6,a1,h,4,2024-01-01 10:00:00,,t,-1e400\n"
    )
    ds = dataclasses.replace(dataset(path), label=LabelConf(column="clicked", threshold=4.0))
    got = validate(read_events(spark, ds, "2024-01-01"), ds).select(
        "user_key", "_reason", "_field", "label"
    )
    expected = spark.createDataFrame(
        [
            ("u1", None, None, 1),
            ("u2", "bad_label", "clicked", None),
            ("u3", "bad_label", "clicked", None),
            ("u4", "bad_label", "clicked", None),
            ("u5", "bad_value", "price", 1),
            ("u6", "bad_value", "price", 1),
        ],
        "user_key string, _reason string, _field string, label int",
    )
    assertDataFrameEqual(got, expected)

"""Vocabularies: categorical values -> int64 indices.

Index 0 is padding / absent (the row's domain lacks the field, or the value is empty),
1 is out-of-vocabulary (seen fewer than ``min_count`` times in training rows, or unseen),
2.. are the kept values, most frequent first (ties by value, so a rebuild is identical). A
vocabulary is extended day by day (``etl.vocab: extend``): new values are appended, and an
index once given never moves.
A field with ``hash_buckets: N`` skips the vocabulary: index = 2 + xxhash64(value) mod N.

The ``vocab`` table: ``field``, ``value``, ``index``, ``count``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from cdtm.config import FieldConf
from feature_etl.validate import value_column

PAD, OOV, FIRST = 0, 1, 2
VOCAB_COLUMNS = ("field", "value", "index", "count")
VOCAB_DDL = "field string, value string, index long, count long"


def feature_column(field: FieldConf) -> str:
    return f"f_{field.name}"


def build_vocab(train: DataFrame, fields: Sequence[FieldConf], min_count: int) -> DataFrame:
    """Vocabulary of every non-hashed field from the training rows."""
    empty = train.sparkSession.createDataFrame([], VOCAB_DDL)
    return extend_vocab(empty, train, fields, min_count)


def extend_vocab(
    existing: DataFrame, train: DataFrame, fields: Sequence[FieldConf], min_count: int
) -> DataFrame:
    """``existing`` unchanged, plus the values of these training rows it lacks, appended after
    each field's last index (most frequent first, ties by value).

    An index, once given, never moves: rows indexed with an older version keep meaning the same
    values. ``min_count`` (or a field's own) applies to the new values only, counted in
    ``train``.
    """
    fields = [f for f in fields if f.hash_buckets <= 0]
    existing = existing.select(*VOCAB_COLUMNS)
    if not fields:
        return existing
    pairs = train.select(
        F.explode(
            F.array(
                *[
                    F.struct(F.lit(f.name).alias("field"), F.col(value_column(f)).alias("value"))
                    for f in fields
                ]
            )
        ).alias("p")
    ).select("p.field", "p.value")
    counts = (
        pairs.where(F.col("value").isNotNull())
        .groupBy("field", "value")
        .agg(F.count("*").alias("count"))
    )
    threshold = F.lit(min_count)
    for f in fields:
        if f.min_count is not None:
            threshold = F.when(F.col("field") == f.name, F.lit(f.min_count)).otherwise(threshold)
    fresh = counts.where(F.col("count") >= threshold).join(
        existing.select("field", "value"), ["field", "value"], "left_anti"
    )
    last = existing.groupBy("field").agg(F.max("index").alias("_last"))
    order = Window.partitionBy("field").orderBy(F.desc("count"), F.asc("value"))
    added = fresh.join(F.broadcast(last), "field", "left").select(
        "field",
        "value",
        (F.row_number().over(order) + F.coalesce(F.col("_last"), F.lit(FIRST - 1)))
        .cast("long")
        .alias("index"),
        F.col("count").cast("long"),
    )
    return existing.unionByName(added)


def apply_vocab(df: DataFrame, vocab: DataFrame, fields: Sequence[FieldConf]) -> DataFrame:
    """Add ``f_<field>`` (int64) for every field; drops nothing."""
    out = df
    for f in fields:
        v = F.col(value_column(f))
        if f.hash_buckets > 0:
            idx = F.pmod(F.xxhash64(v), F.lit(f.hash_buckets)) + F.lit(FIRST)
            out = out.withColumn(
                feature_column(f), F.when(v.isNull(), PAD).otherwise(idx).cast("long")
            )
            continue
        lookup = vocab.where(F.col("field") == f.name).select(
            F.col("value").alias("_vocab_value"), F.col("index").alias("_vocab_index")
        )
        out = out.join(lookup, v == F.col("_vocab_value"), "left")
        idx = (
            F.when(v.isNull(), PAD)
            .when(F.col("_vocab_index").isNull(), OOV)
            .otherwise(F.col("_vocab_index"))
        )
        out = out.withColumn(feature_column(f), idx.cast("long")).drop(
            "_vocab_value", "_vocab_index"
        )
    return out


def vocab_sizes(vocab: DataFrame, fields: Sequence[FieldConf]) -> dict[str, int]:
    """Embedding rows per field: max index + 1 (at least PAD and OOV). Collects one row per field."""
    maxes = {
        r["field"]: r["m"] for r in vocab.groupBy("field").agg(F.max("index").alias("m")).collect()
    }
    out = {}
    for f in fields:
        if f.hash_buckets > 0:
            out[f.name] = f.hash_buckets + FIRST
        else:
            out[f.name] = int(maxes.get(f.name) or OOV) + 1
    return out

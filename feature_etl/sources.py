"""Extract: raw events as string columns, whatever the source.

Every source yields one row per input event with the source's columns as strings (types are
checked by validation, so a bad value becomes a reject, not a crash) plus:

- ``_raw``: the row as it came (the malformed text, or JSON of the string values),
- ``_file``: the input file it came from,
- ``_corrupt``: set when the row did not parse (wrong number of fields),
- ``_missing``: the spec's columns that the row's file lacks, where other files have them,
- ``_domain_from_file``: the domain, where the dataset maps input files to domains,
- ``_unmatched``: the key column of the first side-table join that found no row.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Collection, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType
from pyspark.sql.utils import AnalysisException

from cdtm.config import DatasetConf, JoinConf, SourceConf, resolve_path

CORRUPT = "_corrupt"
MISSING = "_missing"
META_COLUMNS = ("_raw", "_file", CORRUPT, MISSING, "_domain_from_file", "_unmatched")


class SourceError(ValueError):
    """An input could not be read; the message names the path."""


def read_events(
    spark: SparkSession, dataset: DatasetConf, ds: str, labelled: bool = True
) -> DataFrame:
    """Raw events of day ``ds`` (``{ds}`` in paths is replaced) with the meta columns above
    (``labelled=False``: candidate rows, see ``spec_columns``)."""
    src = dataset.source
    if src.format == "synthetic":
        from feature_etl.synthetic import generate

        if src.synthetic is None:
            raise SourceError("dataset.source.synthetic: generator settings are missing")
        events = generate(spark, src.synthetic)
        return _with_meta(events, events.columns, F.lit("synthetic"), None, False)

    needed = spec_columns(dataset, labelled)
    if src.files:
        parts = []
        for path, domain in src.files.items():
            df = _read(spark, src.format, resolve_path(path, ds), src, needed)
            data_cols = [c for c in df.columns if c not in (CORRUPT, MISSING)]
            parts.append(_with_meta(df, data_cols, F.input_file_name(), F.lit(domain), True))
        events = _union(parts)
    else:
        if not src.path:
            raise SourceError("dataset.source: give path, or files (one domain per file)")
        df = _read(spark, src.format, resolve_path(src.path, ds), src, needed)
        data_cols = [c for c in df.columns if c not in (CORRUPT, MISSING)]
        events = _with_meta(df, data_cols, F.input_file_name(), None, True)

    for join in src.joins:
        events = _join_side(spark, events, join, src, ds)
    return events


def spec_columns(dataset: DatasetConf, labelled: bool = True) -> set[str]:
    """The input columns the dataset spec reads (from the events or a side table); unlabelled
    candidates need neither the label nor the timestamp."""
    assert dataset.label and dataset.domain and dataset.keys
    needed = {dataset.keys.user}
    if labelled:
        needed.add(dataset.label.column)
    if dataset.timestamp and labelled:
        needed.add(dataset.timestamp.column)
    needed |= {dataset.keys.item} | {f.source_column for f in dataset.fields}
    needed |= {d.source_column for d in dataset.dense}
    if dataset.domain.column:
        needed.add(dataset.domain.column)
    return needed


def _with_meta(
    df: DataFrame,
    data_cols: Sequence[str],
    file_col: Column,
    domain: Column | None,
    read: bool,
) -> DataFrame:
    """``read``: ``df`` came from ``_read`` and has its CORRUPT and MISSING columns."""
    as_json = F.to_json(F.struct(*[F.col(c) for c in data_cols]), {"ignoreNullFields": "false"})
    none = F.lit(None).cast("string")
    corrupt = F.col(CORRUPT) if read else none
    return df.select(
        *[F.col(c) for c in data_cols],
        F.coalesce(corrupt, as_json).alias("_raw"),
        file_col.alias("_file"),
        corrupt.alias(CORRUPT),
        (F.col(MISSING) if read else none).alias(MISSING),
        (domain if domain is not None else F.lit(None)).cast("string").alias("_domain_from_file"),
        F.lit(None).cast("string").alias("_unmatched"),
    )


def _union(parts: list[DataFrame]) -> DataFrame:
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p, allowMissingColumns=True)
    return out


def _check_exists(spark: SparkSession, path: str) -> None:
    """Fail with the path unless it (file, folder or glob) matches something.

    The check goes through Hadoop's file systems, so a ``dbfs:/``, ``s3a://``, ``abfss://`` or
    ``/Volumes/...`` input is looked up where the cluster reads it, not on the driver's disk.
    """
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    try:
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        found = hpath.getFileSystem(conf).globStatus(hpath)
    except Exception as e:  # py4j wraps the JVM's IOException (no file system for a scheme)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SourceError(f"cannot list {path}: {reason}") from e
    if found is None or len(found) == 0:
        raise SourceError(f"input not found: {path}")


def _read(
    spark: SparkSession,
    fmt: str,
    path: str,
    src: SourceConf,
    needed: Collection[str] = (),
) -> DataFrame:
    """One input (file, folder or glob) with every column as a string, plus CORRUPT and MISSING.

    CSV and RecBole files are read by the names in each file's own header, so files whose
    headers list the columns in another order still line up. A file whose header lacks one of
    ``needed`` that another file of the input has gets MISSING set on all its rows (they become
    ``missing_column`` rejects); a column no file has is the dataset spec's error (validate).
    """
    _check_exists(spark, path)
    try:
        if fmt == "parquet":
            df = spark.read.parquet(path)
            return df.select(
                *[F.col(c).cast("string").alias(c) for c in df.columns],
                F.lit(None).cast("string").alias(CORRUPT),
                F.lit(None).cast("string").alias(MISSING),
            )
        files = sorted(spark.read.format("text").load(path).inputFiles())
    except AnalysisException as e:
        raise SourceError(f"cannot read {path}: {e}") from e
    if not files:
        raise SourceError(f"{path}: no input files")
    recbole = fmt == "recbole"
    sep = "\t" if recbole else src.delimiter
    quote = "" if recbole else src.quote  # RecBole files do not quote: titles hold '"'
    by_header: dict[tuple[str, ...], list[str]] = {}
    for f in files:
        by_header.setdefault(tuple(_header(spark, f, sep, quote)), []).append(f)
    have = {n for header in by_header for n in _names(header, recbole)}
    # With CSV column pruning, a query that needs only some columns parses only those, and a
    # row with too many or too few fields is no longer flagged (found by tests/reliability).
    spark.conf.set("spark.sql.csv.parser.columnPruning.enabled", "false")
    parts = []
    for header, group in by_header.items():
        names = _names(header, recbole)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SourceError(f"{group[0]}: duplicate column names in the header: {dupes}")
        schema = StructType(
            [StructField(h, StringType()) for h in header] + [StructField(CORRUPT, StringType())]
        )
        df = (
            spark.read.schema(schema)
            .option("header", True)
            .option("sep", sep)
            .option("quote", quote)
            .option("multiLine", src.multiline and not recbole)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .csv(group)
            .toDF(*names, CORRUPT)
        )
        lacks = sorted((set(needed) & have) - set(names))
        parts.append(
            df.withColumns({c: F.lit(None).cast("string") for c in lacks}).withColumn(
                MISSING, F.lit(",".join(lacks) if lacks else None).cast("string")
            )
        )
    return _union(parts)


def _header(spark: SparkSession, file: str, sep: str, quote: str) -> list[str]:
    """The column names in the first line of ``file`` (any Hadoop file system, compressed too)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    hpath = jvm.org.apache.hadoop.fs.Path(file)
    stream = hpath.getFileSystem(conf).open(hpath)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(conf).getCodec(hpath)
    if codec is not None:
        stream = codec.createInputStream(stream)
    reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8"))
    try:
        line = reader.readLine()
    finally:
        reader.close()
    if not line or not line.strip():
        raise SourceError(f"{file}: empty input (no header row)")
    line = line.removeprefix("\ufeff")
    if len(sep) == 1:
        if quote:
            return next(csv.reader([line], delimiter=sep, quotechar=quote))
        return next(csv.reader([line], delimiter=sep, quoting=csv.QUOTE_NONE))
    return [h.strip(quote) if quote else h for h in line.split(sep)]


def _names(header: Sequence[str], recbole: bool) -> list[str]:
    return [h.split(":")[0] for h in header] if recbole else list(header)


def _join_side(
    spark: SparkSession, events: DataFrame, join: JoinConf, src: SourceConf, ds: str
) -> DataFrame:
    """Left-join a side table (users, items) on ``join.on``; rows without a match are marked."""
    path = resolve_path(join.path, ds)
    side = _read(spark, join.format or src.format, path, src).drop(CORRUPT, MISSING)
    if join.on not in side.columns:
        raise SourceError(f"{path}: join column {join.on!r} not in its header {side.columns}")
    if join.on not in events.columns:
        raise SourceError(f"join on {join.on!r}: the events have no such column ({path})")
    extra = [c for c in side.columns if c != join.on and c not in events.columns]
    # One row per key, chosen deterministically, so a duplicated key cannot duplicate events.
    side = side.groupBy(join.on).agg(
        F.min(F.struct(*[F.col(c) for c in extra])).alias("_side")
        if extra
        else F.lit(1).alias("_side")
    )
    marker = "_matched"  # dropped again below
    side = side.withColumn(marker, F.lit(True))
    joined = events.join(side, on=join.on, how="left")
    cols = [F.col(c) for c in events.columns if c != "_unmatched"]
    cols += [F.col(f"_side.{c}").alias(c) for c in extra]
    unmatched = F.when(
        F.col("_unmatched").isNull() & F.col(marker).isNull() & F.col(join.on).isNotNull(),
        F.lit(f"{join.on} ({os.path.basename(path)})"),
    ).otherwise(F.col("_unmatched"))
    return joined.select(*cols, unmatched.alias("_unmatched"))

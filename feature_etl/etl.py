"""The feature ETL job: raw events of one day -> ``features``, ``rejects``, ``vocab``, ``feature_spec``.

Extract (``sources.read_events``) -> validate -> split -> vocabulary -> load. Every input row
ends up either in ``features`` or in ``rejects`` with a reason code, and the report checks that
input = accepted + rejected before it returns. Re-running a day replaces that day.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from cdtm.config import Config, DatasetConf
from cdtm.faults import fault_point
from cdtm.lake import Lake, WriteResult, commit_info
from cdtm.spec import (
    DAY_KEY,
    DAYS_KEY,
    GENERATION_KEY,
    LINK_KEYS,
    SPEC_COLUMNS,
    DenseSpec,
    FeatureSpec,
    FieldSpec,
    published_versions,
    read_feature_spec,
)
from feature_etl.sources import read_events
from feature_etl.split import assign_split
from feature_etl.validate import REASONS, validate, value_column
from feature_etl.vocab import (
    OOV,
    PAD,
    apply_vocab,
    build_vocab,
    extend_vocab,
    feature_column,
    vocab_sizes,
)

log = logging.getLogger(__name__)

FEATURES, REJECTS, VOCAB, SPEC = "features", "rejects", "vocab", "feature_spec"


class EtlError(RuntimeError):
    """The ETL refused to publish a day; the message says why and what was counted."""


@dataclasses.dataclass(frozen=True)
class EtlReport:
    ds: str
    dataset: str
    input_rows: int
    accepted_rows: int
    rejected: dict[str, int]
    domain_rows: dict[str, int]
    split_rows: dict[str, int]
    vocab_sizes: dict[str, int]
    versions: dict[str, int]
    seconds: float

    @property
    def rejected_rows(self) -> int:
        return sum(self.rejected.values())

    @property
    def reject_rate(self) -> float:
        return self.rejected_rows / self.input_rows if self.input_rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(rejected_rows=self.rejected_rows, reject_rate=round(self.reject_rate, 6))
        return d

    def summary(self) -> str:
        lines = [
            f"ETL {self.dataset} ds={self.ds}: input {self.input_rows:,} = accepted {self.accepted_rows:,}"
            f" + rejected {self.rejected_rows:,} ({self.reject_rate:.2%})  [{self.seconds:.1f}s]",
        ]
        lines += [f"  rejected {r}: {n:,}" for r, n in self.rejected.items() if n]
        lines.append(
            "  rows per domain: " + ", ".join(f"{d}={n:,}" for d, n in self.domain_rows.items())
        )
        lines.append(
            "  rows per split: " + ", ".join(f"{s}={n:,}" for s, n in self.split_rows.items())
        )
        lines.append(
            "  vocab sizes: " + ", ".join(f"{f}={n:,}" for f, n in self.vocab_sizes.items())
        )
        lines.append("  table versions: " + ", ".join(f"{t}={v}" for t, v in self.versions.items()))
        return "\n".join(lines)


def dataset_of(cfg: Config) -> DatasetConf:
    if cfg.dataset is None:
        raise EtlError("no dataset spec: add one, e.g. --config conf/datasets/movielens-1m.yaml")
    if cfg.dataset.source.format == "synthetic":
        from feature_etl.synthetic import dataset_spec

        assert cfg.dataset.source.synthetic is not None
        return dataset_spec(cfg.dataset.source.synthetic)
    return cfg.dataset


def feature_spec(dataset: DatasetConf, sizes: Mapping[str, int]) -> FeatureSpec:
    assert dataset.domain is not None
    all_domains = tuple(dataset.domain.names)
    return FeatureSpec(
        dataset=dataset.name,
        domains=all_domains,
        fields=tuple(
            FieldSpec(
                f.name,
                feature_column(f),
                tuple(f.domains or all_domains),
                f.transferable,
                sizes[f.name],
            )
            for f in dataset.fields
        ),
        dense=tuple(
            DenseSpec(d.name, f"dense_{d.name}", tuple(d.domains or all_domains), d.min, d.max)
            for d in dataset.dense
        ),
    )


def row_id() -> Column:
    """A hash of the raw row; identical raw lines are distinct events: their rank among equals
    makes it unique."""
    occurrence = F.row_number().over(Window.partitionBy("_raw").orderBy("_file"))
    return F.xxhash64("_raw", occurrence).alias("row_id")


def to_features(df: DataFrame, dataset: DatasetConf, ds: str) -> DataFrame:
    """The ``features`` table's columns, in order."""
    return df.select(
        F.lit(ds).alias("ds"),
        row_id(),
        F.col("domain").cast("int"),
        F.col("label").cast("int"),
        "split",
        F.col("ts").cast("long"),
        "user_key",
        "item_key",
        *[F.col(feature_column(f)).cast("long") for f in dataset.fields],
        *[F.col(f"dense_{d.name}").cast("float") for d in dataset.dense],
    )


def to_rejects(df: DataFrame, ds: str) -> DataFrame:
    return df.where(F.col("_reason").isNotNull()).select(
        F.lit(ds).alias("ds"),
        F.col("_reason").alias("reason"),
        F.col("_field").alias("field"),
        F.col("_file").alias("source_file"),
        F.col("_raw").alias("raw"),
    )


def read_spec(spark: SparkSession, lake: Lake, version: int | None = None) -> FeatureSpec:
    del spark  # the spec is tiny: delta-rs reads it without a Spark job
    return read_feature_spec(lake.path(SPEC), version)


def index_values(
    spark: SparkSession, lake: Lake, cfg: Config, dataset: DatasetConf, train_rows: DataFrame
) -> tuple[DataFrame, str]:
    """The vocabulary this day is indexed with, and its generation (a build starts one; an
    extension keeps its base's, since no index moved)."""
    if cfg.etl.vocab == "build" and lake.exists(FEATURES):
        raise EtlError(
            f"etl.vocab=build would re-index from this day's rows while the days stored in "
            f"{lake.path(FEATURES)} keep indices into the current vocabulary (their rows would "
            "map to other values). Use etl.vocab=extend (the default: new values are appended, "
            "no index moves), etl.vocab=rebuild (re-indexes every stored day in the same run), "
            "or a new lake.root."
        )
    if cfg.etl.vocab in ("build", "rebuild") or not lake.exists(VOCAB):
        return build_vocab(train_rows, dataset.fields, cfg.etl.min_count), uuid.uuid4().hex[:12]
    # The vocabulary the latest published day was indexed with (a newer one from a killed run
    # was never published); without any day, the latest.
    base = (
        published_versions(lake.root, lake.version(FEATURES))["vocab"]
        if lake.exists(FEATURES)
        else lake.version(VOCAB)
    )
    existing = lake.read(spark, VOCAB, base)
    vocab = extend_vocab(existing, train_rows, dataset.fields, cfg.etl.min_count)
    return vocab, vocab_generation(lake, base)


def vocab_generation(lake: Lake, version: int) -> str:
    """The generation of vocab ``version``: the same for every extension of one build."""
    info = commit_info(lake.path(VOCAB), version)
    return str(info.get(GENERATION_KEY) or f"v{version}")  # tables from before generations


def stored_days(
    spark: SparkSession, lake: Lake, dataset: DatasetConf, ds: str
) -> tuple[DataFrame, int]:
    """For ``etl.vocab=rebuild``: the published days other than ``ds``, each vocabulary field's
    index read back as its value (``_v_<field>``; the old index kept as ``_old_<field>``), and
    the features version they come from."""
    linked = published_versions(lake.root, lake.version(FEATURES))
    rows = lake.read(spark, FEATURES, linked["features"]).where(F.col("ds") != F.lit(ds))
    vocab = lake.read(spark, VOCAB, linked["vocab"])
    for f in dataset.fields:
        if f.hash_buckets > 0:
            continue
        old = f"_old_{f.name}"
        lookup = vocab.where(F.col("field") == f.name).select(
            F.col("index").alias(old), F.col("value").alias(value_column(f))
        )
        rows = rows.withColumnRenamed(feature_column(f), old).join(lookup, old, "left")
    return rows, linked["features"]


def rebuilt(rows: DataFrame, vocab: DataFrame, dataset: DatasetConf) -> DataFrame:
    """Stored rows re-indexed with the rebuilt ``vocab``: absent stays absent, a value once out
    of the vocabulary stays OOV (its value was never stored), every other value gets its new
    index."""
    fields = [f for f in dataset.fields if f.hash_buckets <= 0]
    out = apply_vocab(rows, vocab, fields)
    for f in fields:
        old = F.col(f"_old_{f.name}")
        out = out.withColumn(
            feature_column(f),
            F.when(old == F.lit(PAD), PAD)
            .when(old == F.lit(OOV), OOV)
            .otherwise(F.col(feature_column(f))),
        )
    return out


def run_etl(spark: SparkSession, cfg: Config) -> EtlReport:
    start = time.time()
    ds = cfg.run.ds
    dataset = dataset_of(cfg)
    lake = Lake.of(cfg.lake)
    log.info("ETL %s for ds=%s -> %s", dataset.name, ds, lake.root)
    if cfg.etl.split.method == "time" and dataset.timestamp is None:
        raise EtlError(
            f"etl.split.method=time: dataset {dataset.name!r} declares no timestamp "
            "(dataset.timestamp); use etl.split.method=random or declare the timestamp column"
        )

    def write_day(table: str, df: DataFrame) -> WriteResult:
        """Replace day ``ds`` of ``table`` in one commit."""
        return lake.write(spark, df, table, mode="overwrite_day", partition_by=["ds"], ds=ds)

    checked = validate(read_events(spark, dataset, ds), dataset).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    stored: DataFrame | None = None  # etl.vocab=rebuild: the stored days, re-indexed below
    stored_rows = 0
    try:
        counts = {
            r["_reason"]: int(r["count"]) for r in checked.groupBy("_reason").count().collect()
        }
        input_rows = sum(counts.values())
        accepted_rows = counts.pop(None, 0)
        rejected = {reason: counts.get(reason, 0) for reason in REASONS}
        if input_rows == 0:
            raise EtlError(f"ds={ds}: the input has no rows; nothing written")
        versions: dict[str, int] = {}
        rate = (input_rows - accepted_rows) / input_rows
        if rate > cfg.etl.max_reject_rate:
            res = write_day(REJECTS, to_rejects(checked, ds))
            detail = ", ".join(f"{r}={n:,}" for r, n in rejected.items() if n)
            raise EtlError(
                f"ds={ds}: {rate:.2%} of {input_rows:,} input rows rejected, above etl.max_reject_rate="
                f"{cfg.etl.max_reject_rate:.2%} ({detail}). Features NOT written; the rejected rows are "
                f"in {lake.path(REJECTS)} version {res.version} for inspection."
            )

        accepted = assign_split(checked.where(F.col("_reason").isNull()), cfg.etl.split)
        # rebuild: one new vocabulary from this day and every stored day, which are re-indexed
        # with it and written together with this day in one commit.
        rebuild = cfg.etl.vocab == "rebuild" and lake.exists(FEATURES)
        if cfg.etl.vocab == "reuse":
            if not lake.exists(VOCAB):
                raise EtlError(f"etl.vocab=reuse but there is no vocab table at {lake.path(VOCAB)}")
            versions[VOCAB], versions[SPEC] = lake.version(VOCAB), lake.version(SPEC)
            generation = vocab_generation(lake, versions[VOCAB])
            vocab = lake.read(spark, VOCAB, versions[VOCAB])
            spec = read_spec(spark, lake, versions[SPEC])
            wanted = [f.name for f in dataset.fields]
            if [f.name for f in spec.fields] != wanted:
                raise EtlError(
                    f"etl.vocab=reuse: the stored feature spec has fields {[f.name for f in spec.fields]}, "
                    f"the dataset declares {wanted}"
                )
        else:
            # split.method=days: every row of a day is trained on once the day leaves the
            # holdout, so the vocabulary takes all of them.
            every_row = cfg.etl.split.method == "days"
            train_rows = accepted if every_row else accepted.where(F.col("split") == "train")
            if rebuild:
                stored, stored_version = stored_days(spark, lake, dataset, ds)
                stored = stored.persist(StorageLevel.MEMORY_AND_DISK)
                stored_rows = stored.count()
                values = [value_column(f) for f in dataset.fields if f.hash_buckets <= 0]
                train_rows = train_rows.select(*values).unionByName(
                    (stored if every_row else stored.where(F.col("split") == "train")).select(
                        *values
                    )
                )
                log.info(
                    "etl.vocab=rebuild: re-indexing %s stored rows of features v%d with this day",
                    f"{stored_rows:,}",
                    stored_version,
                )
            vocab, generation = index_values(spark, lake, cfg, dataset, train_rows)
            res = lake.write(
                spark,
                vocab,
                VOCAB,
                mode="overwrite",
                commit_metadata={GENERATION_KEY: generation},
            )
            versions[VOCAB] = res.version
            vocab = lake.read(spark, VOCAB, res.version)
            spec = feature_spec(dataset, vocab_sizes(vocab, dataset.fields))
            spec_df = spark.createDataFrame(spec.to_rows(), SPEC_COLUMNS)
            versions[SPEC] = lake.write(spark, spec_df, SPEC, mode="overwrite").version

        by_domain: dict[int, int] = {}
        by_split: dict[str, int] = {}
        for r in accepted.groupBy("domain", "split").count().collect():
            by_domain[r["domain"]] = by_domain.get(r["domain"], 0) + r["count"]
            by_split[r["split"]] = by_split.get(r["split"], 0) + r["count"]

        features = to_features(apply_vocab(accepted, vocab, dataset.fields), dataset, ds)
        metadata: dict[str, object] = {DAY_KEY: ds, GENERATION_KEY: generation}
        if stored is not None:
            again = rebuilt(stored, vocab, dataset).select(*features.columns)
            features = again.unionByName(features)
            days = {r["ds"] for r in stored.select("ds").distinct().collect()} | {ds}
            metadata[DAYS_KEY] = sorted(days)
        if cfg.etl.output_partitions > 0:
            features = features.repartition(cfg.etl.output_partitions)
        # Features last: its commit publishes the day, and names the vocab/spec it was built with.
        rejects = write_day(REJECTS, to_rejects(checked, ds))
        fault_point("etl.before_publish")
        written = lake.write(
            spark,
            features,
            FEATURES,
            # Not compacted: the training reader shards a day by row group, and one file per
            # day could leave a Horovod rank without rows (the ETL's files are sized by
            # etl.output_partitions instead).
            compact=False,
            # A field or dense feature added to the dataset spec adds its column; older days
            # read it as absent (index 0, dense 0). A removed one is refused by name.
            evolve=True,
            mode="overwrite" if stored is not None else "overwrite_day",
            partition_by=["ds"],
            ds=ds,
            commit_metadata={
                LINK_KEYS["vocab"]: versions[VOCAB],
                LINK_KEYS["feature_spec"]: versions[SPEC],
                LINK_KEYS["rejects"]: rejects.version,
                **metadata,
            },
        )
        versions[FEATURES], versions[REJECTS] = written.version, rejects.version

        written_today = written.rows - stored_rows
        if written_today + rejects.rows != input_rows or written_today != accepted_rows:
            raise EtlError(
                f"ds={ds}: counts do not reconcile: input {input_rows:,}, features written {written.rows:,}, "
                f"rejects written {rejects.rows:,} (accepted counted {accepted_rows:,})"
            )
    finally:
        checked.unpersist()
        if stored is not None:
            stored.unpersist()

    report = EtlReport(
        ds=ds,
        dataset=dataset.name,
        input_rows=input_rows,
        accepted_rows=accepted_rows,
        rejected=rejected,
        domain_rows={name: by_domain.get(i, 0) for i, name in enumerate(spec.domains)},
        split_rows={s: by_split.get(s, 0) for s in ("train", "valid", "test")},
        vocab_sizes={f.name: f.vocab_size for f in spec.fields},
        versions=versions,
        seconds=round(time.time() - start, 2),
    )
    log.info("%s", report.summary())
    return report


def report_json(report: EtlReport) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=True)


def readback_check(spark: SparkSession, lake: Lake, table: str, version: int) -> dict[str, Any]:
    """Run the same aggregate SQL through Spark and through delta-rs over one table version.

    Per domain: row count, sum of every numeric column and distinct count of every string
    column. Returns the aggregates; raises EtlError naming the first value that differs.
    """
    from cdtm.lake import query

    df = lake.read(spark, table, version)
    numeric = [c for c, t in df.dtypes if t in ("int", "bigint", "float", "double", "smallint")]
    strings = [c for c, t in df.dtypes if t == "string"]
    aggs = ["COUNT(*) AS n"]
    aggs += [f"SUM(CAST({c} AS DOUBLE)) AS sum_{c}" for c in numeric if c != "domain"]
    aggs += [f"COUNT(DISTINCT {c}) AS nd_{c}" for c in strings]
    sql = f"SELECT domain, {', '.join(aggs)} FROM t GROUP BY domain ORDER BY domain"
    df.createOrReplaceTempView("t")
    via_spark = [r.asDict() for r in spark.sql(sql).collect()]
    spark.catalog.dropTempView("t")
    via_rs = query(sql, {"t": lake.path(table)}, {"t": version}).to_pylist()
    if len(via_spark) != len(via_rs):
        raise EtlError(
            f"{table} v{version}: Spark sees {len(via_spark)} domains, delta-rs {len(via_rs)}"
        )
    for a, b in zip(via_spark, via_rs):
        for key, value in a.items():
            other = b[key]
            same = (
                abs(value - other) <= 1e-6 * max(1.0, abs(value))
                if isinstance(value, float)
                else value == other
            )
            if not same:
                raise EtlError(
                    f"{table} v{version} domain {a['domain']}: {key} is {value} via Spark, {other} via delta-rs"
                )
    return {
        "table": table,
        "version": version,
        "domains": len(via_spark),
        "aggregates": len(via_spark) * len(aggs),
    }

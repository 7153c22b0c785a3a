"""Candidate scoring: the unlabelled rows of day ``run.ds`` (``scoring.candidates``) ->
the ETL's validation -> the model's own frozen vocabulary -> ``scores``, the day replaced in one
commit.

A candidate row that breaks a rule of the dataset spec, or whose domain the model was not
trained on (``domain_not_in_model``), goes to the ``candidate_rejects`` table with its reason;
input rows = scored + rejected, or nothing is reported done. A value the model has never seen
(a new user, a new item) is scored as out-of-vocabulary.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cdtm.config import CandidatesConf, Config, DatasetConf, resolve_path
from cdtm.lake import Lake
from cdtm.scoring import (
    ScoreReport,
    ScoringError,
    check_loads,
    load_for_scoring,
    write_scores,
)
from cdtm.spec import FeatureSpec
from cdtm.train.artifacts import VOCAB_FILE
from feature_etl.etl import dataset_of, row_id, to_rejects
from feature_etl.sources import _check_exists, _join_side, _with_meta, read_events
from feature_etl.validate import REASONS, validate
from feature_etl.vocab import apply_vocab

log = logging.getLogger(__name__)
CANDIDATE_REJECTS = "candidate_rejects"
NOT_IN_MODEL = "domain_not_in_model"


def read_candidates(
    spark: SparkSession, dataset: DatasetConf, conf: CandidatesConf, ds: str
) -> DataFrame:
    """The candidate rows as string columns with the ETL's meta columns (sources.py)."""
    if conf.format in ("csv", "parquet"):
        src = dataclasses.replace(
            dataset.source,
            format=conf.format,
            path=conf.path,
            files=None,
            delimiter=conf.delimiter,
            quote=conf.quote,
        )
        return read_events(spark, dataclasses.replace(dataset, source=src), ds, labelled=False)
    if conf.format == "delta":
        assert conf.path
        where = resolve_path(conf.path, ds)
        _check_exists(spark, where)
        df = spark.read.format("delta").load(where)
    else:
        assert conf.table
        where = conf.table
        df = spark.table(where)
    if "ds" in df.columns:
        df = df.where(F.col("ds").cast("string") == ds)
    df = df.select(*[F.col(c).cast("string").alias(c) for c in df.columns])
    events = _with_meta(df, df.columns, F.lit(where), None, False)
    for join in dataset.source.joins:
        events = _join_side(spark, events, join, dataset.source, ds)
    return events


def _in_model(dataset: DatasetConf, spec: FeatureSpec) -> Column:
    """The dataset's domain index -> the model's (null where the model lacks the domain)."""
    assert dataset.domain
    model = {name: i for i, name in enumerate(spec.domains)}
    out = F.lit(None).cast("int")
    for i, name in enumerate(dataset.domain.names):
        if name in model:
            out = F.when(F.col("domain") == i, F.lit(model[name])).otherwise(out)
    return out


def score_candidates(spark: SparkSession, cfg: Config) -> ScoreReport:
    conf = cfg.scoring.candidates
    if conf is None:
        raise ScoringError("no scoring.candidates source configured")
    dataset = dataset_of(cfg)
    assert dataset.domain
    if dataset.domain.column is None:
        raise ScoringError(
            "candidate scoring needs the domain as a column (dataset.domain.column); this "
            "dataset maps input files to domains"
        )
    ds = cfg.run.ds
    lake = Lake.of(cfg.lake)
    artifact, spec = load_for_scoring(cfg)
    fields = {f.name: f for f in dataset.fields}
    lacking = [f.name for f in spec.fields if f.name not in fields]
    lacking += [d.name for d in spec.dense if d.name not in {x.name for x in dataset.dense}]
    if lacking:
        raise ScoringError(
            f"model {artifact.name} reads fields {lacking} that dataset {dataset.name!r} no "
            "longer declares"
        )
    check_loads(artifact)
    log.info("candidates ds=%s (%s) -> scores with %s", ds, conf.format, artifact.name)
    checked = validate(read_candidates(spark, dataset, conf, ds), dataset, labelled=False)
    model_domain = _in_model(dataset, spec)
    not_in_model = F.col("_reason").isNull() & model_domain.isNull()
    checked = (
        checked.withColumn(
            "_field", F.when(not_in_model, dataset.domain.column).otherwise(F.col("_field"))
        )
        .withColumn("_reason", F.when(not_in_model, NOT_IN_MODEL).otherwise(F.col("_reason")))
        .withColumn("domain", model_domain)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        counts = {
            r["_reason"]: int(r["count"]) for r in checked.groupBy("_reason").count().collect()
        }
        input_rows = sum(counts.values())
        rejected = {r: counts.get(r, 0) for r in (*REASONS, NOT_IN_MODEL) if counts.get(r)}
        if input_rows == 0:
            raise ScoringError(f"ds={ds}: no candidate rows in {conf.path or conf.table}")
        model_fields = [fields[f.name] for f in spec.fields]
        accepted = apply_vocab(
            checked.where(F.col("_reason").isNull()), _vocab(spark, artifact, spec), model_fields
        )
        rows = accepted.select(
            F.lit(ds).alias("ds"),
            row_id(),
            F.col("domain").cast("int"),
            "user_key",
            "item_key",
            *[F.col(f.column).cast("long") for f in spec.fields],
            *[F.col(d.column).cast("float") for d in spec.dense],
        )
        rejects = lake.write(
            spark,
            to_rejects(checked, ds),
            CANDIDATE_REJECTS,
            mode="overwrite_day",
            partition_by=["ds"],
            ds=ds,
        )
        report = write_scores(spark, cfg, lake, artifact, rows)
    finally:
        checked.unpersist()
    if report.rows + rejects.rows != input_rows:
        raise ScoringError(
            f"ds={ds}: candidate counts do not reconcile: input {input_rows:,}, scored "
            f"{report.rows:,}, rejected {rejects.rows:,}"
        )
    if rejected:
        log.warning(
            "candidates ds=%s: %d of %d rejected (%s) -> %s",
            ds,
            rejects.rows,
            input_rows,
            ", ".join(f"{r}={n:,}" for r, n in rejected.items()),
            lake.path(CANDIDATE_REJECTS),
        )
    return dataclasses.replace(report, input_rows=input_rows, rejected=rejected)


def _vocab(spark: SparkSession, artifact: Path, spec: FeatureSpec) -> DataFrame:
    """The (field, value, index) rows the model was trained with."""
    path = artifact / VOCAB_FILE
    if not path.is_file():
        raise ScoringError(
            f"model {artifact.name} carries no vocabulary ({VOCAB_FILE}): candidates cannot be "
            "indexed the way it learned them; retrain it with this version"
        )
    import pyarrow.parquet as pq

    table = pq.read_table(path).select(["field", "value", "index"])
    return spark.createDataFrame(table.to_pandas(), "field string, value string, index long")

"""ETL benchmark: the feature ETL (validate, index, tag, split, write Delta) vs DuckDB.

The input is synthetic events (``feature_etl.synthetic``) written once as Parquet files of
string columns, so both sides read the same bytes. DuckDB runs the same transformation as one
SQL statement (validate with the same reason order, hash split, vocabulary from the training
rows with min_count, index every field, scale the dense field) and writes Parquet: the
single-node columnar limit. It writes no rejects/vocab/spec tables and makes no Delta commit,
so the comparison favours DuckDB.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from bench.common import PeakRss, log, timed
from cdtm.config import Config, DatasetConf, SourceConf, SyntheticConf
from feature_etl.etl import run_etl
from feature_etl.synthetic import dataset_spec, generate
from feature_etl.vocab import OOV, PAD

DS = "2024-01-01"


def synthetic_conf(rows: int) -> SyntheticConf:
    # Vocabularies grow with the data, as they do in real logs.
    return SyntheticConf(
        rows=rows, domains=4, seed=0, users=max(rows // 20, 100), items=max(rows // 100, 50)
    )


def make_input(spark: SparkSession, rows: int, root: Path) -> tuple[Path, DatasetConf]:
    """Raw events as Parquet (generated once per size) and the dataset spec that reads them."""
    conf = synthetic_conf(rows)
    path = root / f"events-{rows}"
    if not (path / "_SUCCESS").exists():
        log(f"generating {rows:,} synthetic events -> {path}")
        parts = max(2, rows // 250_000)
        generate(spark, dataclasses.replace(conf, partitions=parts)).write.mode(
            "overwrite"
        ).parquet(str(path))
    spec = dataset_spec(conf)
    source = SourceConf(format="parquet", path=str(path))
    return path, dataclasses.replace(spec, source=source)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def duckdb_sql(dataset: DatasetConf, cfg: Config, src: str, dst: str) -> str:
    """One statement doing what feature_etl does for this dataset (plain fields, unix ts)."""
    assert dataset.domain and dataset.label and dataset.timestamp and dataset.keys
    domain, label, ts, keys = dataset.domain, dataset.label, dataset.timestamp, dataset.keys
    if domain.bins is not None or ts.format != "unix" or not domain.column:
        raise NotImplementedError("the DuckDB baseline covers a domain column and unix timestamps")
    if any(f.token_sep or f.hash_buckets > 0 for f in dataset.fields):
        raise NotImplementedError("the DuckDB baseline covers plain categorical fields")
    names = list(domain.names)

    def clean(col: str) -> str:
        return f"NULLIF(TRIM({_q(col)}), '')"

    def in_domain(domains: list[str] | None) -> str:
        if domains is None:
            return "TRUE"
        return f"domain_idx IN ({', '.join(str(names.index(d)) for d in domains)})"

    raw_cols = sorted(
        {label.column, ts.column, keys.user, keys.item, domain.column}
        | {f.source_column for f in dataset.fields}
        | {d.source_column for d in dataset.dense}
    )
    mapped = (
        f"MAP {{{', '.join(f'{_lit(k)}: {_lit(v)}' for k, v in domain.mapping.items())}}}[{clean(domain.column)}]"
        if domain.mapping
        else clean(domain.column)
    )
    dom_case = " ".join(f"WHEN {mapped} = {_lit(n)} THEN {i}" for i, n in enumerate(names))
    label_ok = (
        "_label IS NOT NULL AND NOT isnan(_label)"
        if label.threshold is not None
        else "_label IN (0, 1)"
    )
    label_val = (
        f"CAST(_label >= {label.threshold} AS INT)"
        if label.threshold is not None
        else "CAST(_label AS INT)"
    )
    required = [label.column, ts.column, keys.user, keys.item, domain.column]
    required += [f.source_column for f in dataset.fields if f.required]
    missing = " OR ".join(f"{clean(c)} IS NULL" for c in dict.fromkeys(required))
    bad_dense = (
        " OR ".join(
            f"({clean(d.source_column)} IS NOT NULL AND TRY_CAST({clean(d.source_column)} AS DOUBLE) IS NULL AND {in_domain(d.domains)})"
            for d in dataset.dense
        )
        or "FALSE"
    )
    s = cfg.etl.split
    values = ", ".join(
        f"CASE WHEN {in_domain(f.domains)} THEN {clean(f.source_column)} END AS {_q('v_' + f.name)}"
        for f in dataset.fields
    )
    pairs = " UNION ALL ".join(
        f"SELECT {_lit(f.name)} AS field, {_q('v_' + f.name)} AS value FROM acc WHERE split = 'train'"
        for f in dataset.fields
    )
    joins = " ".join(
        f"LEFT JOIN vocab {_q('vb_' + f.name)} ON {_q('vb_' + f.name)}.field = {_lit(f.name)} "
        f"AND {_q('vb_' + f.name)}.value = acc.{_q('v_' + f.name)}"
        for f in dataset.fields
    )
    indexed = ", ".join(
        f"CAST(CASE WHEN acc.{_q('v_' + f.name)} IS NULL THEN {PAD} "
        f"ELSE COALESCE({_q('vb_' + f.name)}.idx, {OOV}) END AS BIGINT) AS {_q('f_' + f.name)}"
        for f in dataset.fields
    )
    dense = ", ".join(
        f"CAST(CASE WHEN {in_domain(d.domains)} AND TRY_CAST({clean(d.source_column)} AS DOUBLE) IS NOT NULL "
        f"THEN LEAST(GREATEST((TRY_CAST({clean(d.source_column)} AS DOUBLE) - {d.min}) / {(d.max - d.min) or 1.0}, 0), 1) "
        f"ELSE 0 END AS FLOAT) AS {_q('dense_' + d.name)}"
        for d in dataset.dense
    )
    return f"""
COPY (
WITH ev AS (
  SELECT *, hash({", ".join(_q(c) for c in raw_cols)}) AS _h FROM read_parquet({_lit(src)})
), parsed AS (
  SELECT *, CASE {dom_case} END AS domain_idx,
    TRY_CAST({clean(label.column)} AS DOUBLE) AS _label,
    TRY_CAST({clean(ts.column)} AS DOUBLE) AS _ts
  FROM ev
), checked AS (
  SELECT *, CASE
      WHEN {missing} THEN 'missing_field'
      WHEN domain_idx IS NULL THEN 'unknown_domain'
      WHEN NOT ({label_ok}) THEN 'bad_label'
      WHEN _ts IS NULL OR isnan(_ts) OR abs(_ts) > 1e13 THEN 'bad_timestamp'
      WHEN {bad_dense} THEN 'bad_value'
    END AS reason,
    CASE WHEN (hash(_h, {s.seed}) % 1000000) / 1e6 < {s.train} THEN 'train'
         WHEN (hash(_h, {s.seed}) % 1000000) / 1e6 < {s.train + s.valid} THEN 'valid'
         ELSE 'test' END AS split,
    {values}
  FROM parsed
), acc AS (
  SELECT * FROM checked WHERE reason IS NULL
), counts AS (
  SELECT field, value, COUNT(*) AS n FROM ({pairs}) WHERE value IS NOT NULL
  GROUP BY field, value HAVING COUNT(*) >= {cfg.etl.min_count}
), vocab AS (
  SELECT field, value, ROW_NUMBER() OVER (PARTITION BY field ORDER BY n DESC, value) + 1 AS idx
  FROM counts
)
SELECT {_lit(DS)} AS ds, hash(acc._h, ROW_NUMBER() OVER (PARTITION BY acc._h)) AS row_id,
  acc.domain_idx AS domain, {label_val} AS label, acc.split, CAST(floor(acc._ts) AS BIGINT) AS ts,
  {clean(keys.user)} AS user_key, {clean(keys.item)} AS item_key, {indexed}, {dense}
FROM acc {joins}
) TO {_lit(dst)} (FORMAT parquet, PER_THREAD_OUTPUT true)
"""


def run_duckdb(dataset: DatasetConf, cfg: Config, src: Path, dst: Path) -> int:
    import duckdb

    shutil.rmtree(dst, ignore_errors=True)
    con = duckdb.connect()
    try:
        con.execute(duckdb_sql(dataset, cfg, f"{src}/*.parquet", str(dst)))
        (n,) = con.execute(f"SELECT COUNT(*) FROM read_parquet('{dst}/*.parquet')").fetchone()  # type: ignore[misc]
    finally:
        con.close()
    return int(n)


def bench_size(
    spark: SparkSession, cfg: Config, rows: int, repeats: int, work: Path
) -> dict[str, Any]:
    src, dataset = make_input(spark, rows, work)
    lake = work / f"lake-{rows}"
    run_cfg = dataclasses.replace(
        cfg,
        dataset=dataset,
        lake=dataclasses.replace(cfg.lake, root=str(lake)),
        run=dataclasses.replace(cfg.run, ds=DS),
    )

    def spark_etl() -> Any:
        shutil.rmtree(lake, ignore_errors=True)
        return run_etl(spark, run_cfg)

    with PeakRss() as rss:
        spark_s, spark_all, report = timed(spark_etl, repeats, f"spark ETL {rows:,}")
    duck_s, duck_all, duck_rows = timed(
        lambda: run_duckdb(dataset, run_cfg, src, work / f"duckdb-{rows}"),
        repeats,
        f"duckdb {rows:,}",
    )
    if duck_rows != report.accepted_rows:
        raise RuntimeError(
            f"DuckDB baseline kept {duck_rows:,} rows, the ETL {report.accepted_rows:,}: "
            "the two do not do the same work"
        )
    return {
        "rows": rows,
        "spark_seconds": round(spark_s, 3),
        "spark_seconds_all": [round(t, 3) for t in spark_all],
        "spark_rows_per_s": round(rows / spark_s),
        "duckdb_seconds": round(duck_s, 3),
        "duckdb_seconds_all": [round(t, 3) for t in duck_all],
        "duckdb_rows_per_s": round(rows / duck_s),
        "ratio_vs_duckdb": round(duck_s / spark_s, 4),
        "driver_peak_rss_mb": rss.mb,
        "driver_python_peak_rss_mb": rss.self_mb,
        "lake": str(lake),
    }


def bench_etl(
    spark: SparkSession, cfg: Config, sizes: list[int], repeats: int, work: Path
) -> dict[str, Any]:
    """Each size in turn (smallest first) with the configured engine; growth = time at the
    largest / time at the smallest. The other Delta engine is timed at the smallest size, so
    that both engines' ratios against DuckDB come from the same run."""
    # Warm-up (untimed): JVM JIT, Python workers, first Delta commits.
    bench_size(spark, cfg, min(sizes), 1, work)
    engine = cfg.lake.engine
    other = "delta-rs" if engine == "spark" else "spark"
    out: dict[str, Any] = {
        "engine": engine,
        "sizes": {str(rows): bench_size(spark, cfg, rows, repeats, work) for rows in sizes},
    }
    small, large = str(min(sizes)), str(max(sizes))
    s, big = out["sizes"][small], out["sizes"][large]
    other_cfg = dataclasses.replace(cfg, lake=dataclasses.replace(cfg.lake, engine=other))
    o = bench_size(spark, other_cfg, min(sizes), repeats, work / other)
    out["other_engine"] = {other: o}
    out["ratio_vs_duckdb"] = s["ratio_vs_duckdb"]
    for name, run in ((engine, s), (other, o)):
        out[f"ratio_vs_duckdb_{name.replace('-', '_')}"] = run["ratio_vs_duckdb"]
    out["growth_rows"] = round(big["rows"] / s["rows"], 2)
    out["growth_1m_to_4m"] = round(big["spark_seconds"] / s["spark_seconds"], 3)
    out["duckdb_growth"] = round(big["duckdb_seconds"] / s["duckdb_seconds"], 3)
    log(
        f"ETL ({engine}): {s['spark_rows_per_s']:,} rows/s at {small} rows; "
        f"ratio vs DuckDB {out['ratio_vs_duckdb']} ({other}: {o['ratio_vs_duckdb']}); "
        f"growth x{out['growth_1m_to_4m']}"
    )
    return out

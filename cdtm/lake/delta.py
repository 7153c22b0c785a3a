"""Driver side of Delta Lake I/O: commit, read a version, list files, history, SQL."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder, Schema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    RemoveAction,
    create_table_with_add_actions,
)

from cdtm.faults import fault_point
from cdtm.lake._files import FILE_SCHEMA_DDL, write_files

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from cdtm.config import LakeConf

WriteMode = Literal["create", "append", "overwrite", "overwrite_day"]
Engine = Literal["delta-rs", "spark"]


class LakeError(RuntimeError):
    """A Delta table could not be read or written; the message names the table."""


class ConcurrentWriteError(LakeError):
    """Another writer committed to the table first; nothing of this write was committed."""


class SchemaMismatchError(LakeError):
    """The DataFrame's schema differs from the table's; nothing was written."""


@dataclasses.dataclass(frozen=True)
class WriteResult:
    table: str
    version: int
    files: int
    rows: int
    commit_seconds: float = 0.0  # the driver's Delta commit alone (after the files are written)


# --------------------------------------------------------------------------- write


def write_table(
    spark: SparkSession,
    df: DataFrame,
    root: str,
    *,
    mode: WriteMode,
    partition_by: Sequence[str] = (),
    ds: str | None = None,
    engine: Engine = "delta-rs",
    commit_retries: int = 0,
    commit_metadata: Mapping[str, Any] | None = None,
    transform: Callable[[Iterable[pa.RecordBatch]], Iterable[pa.RecordBatch]] | None = None,
    transform_schema: str | None = None,
) -> WriteResult:
    """Write ``df`` to the Delta table at ``root`` as one commit.

    ``overwrite_day`` replaces the partition ``ds`` (and fails if a row belongs to another
    day); ``overwrite`` replaces the whole table; ``create`` fails if the table exists.
    A schema that differs from the table's raises SchemaMismatchError before any file is
    written. A crash before the commit leaves the table exactly as it was.

    Two writers at once: the first commit wins; the other raises ConcurrentWriteError, or, with
    ``commit_retries`` > 0, commits again against the new version (its day replaces the
    winner's whole). ``commit_metadata`` is stored in the commit (``history()`` shows it).

    ``transform`` (Arrow batches -> batches of ``transform_schema``, a DDL string) runs on the
    executors in the same Python worker that writes the files: what ``df.mapInArrow(transform,
    transform_schema)`` would give, without a second trip through the JVM.
    """
    partition_by = list(partition_by)
    if mode == "overwrite_day":
        if ds is None or partition_by != ["ds"]:
            raise LakeError(f"{root}: overwrite_day needs ds= and partition_by=['ds']")
    if transform is not None:
        if transform_schema is None:
            raise LakeError(f"{root}: a transform needs its output schema (transform_schema)")
        mapped = df.mapInArrow(transform, transform_schema)
        if engine == "spark":
            df = mapped  # Spark's own writer: no fusing
            transform = None
    if engine == "spark":
        return _write_spark(df, root, mode=mode, partition_by=partition_by, ds=ds)

    from pyspark.sql.pandas.types import to_arrow_schema

    schema = to_arrow_schema(mapped.schema if transform is not None else df.schema)
    missing = [c for c in partition_by if c not in schema.names]
    if missing:
        raise LakeError(f"{root}: partition columns {missing} are not in the DataFrame")
    exists = table_exists(root)
    # The version this write starts from: a commit by another writer after it is a conflict.
    read_version = table_version(root) if exists else None
    if exists and mode == "create":
        raise LakeError(f"{root}: table already exists (mode=create)")
    if exists:
        _check_schema(root, schema, partition_by)

    local = "://" not in root
    if local:
        os.makedirs(root, exist_ok=True)
    writer = partial(
        write_files,
        root=os.path.abspath(root) if local else root,
        txn=uuid.uuid4().hex,
        partition_by=partition_by,
        schema=schema,
        only_partition={"ds": ds} if mode == "overwrite_day" and ds is not None else None,
        transform=transform,
    )
    rows = df.mapInArrow(writer, FILE_SCHEMA_DDL).collect()  # one small row per file
    adds = [
        AddAction(
            r["path"],
            int(r["size"]),
            json.loads(r["partition_values"]),
            int(r["modification_time"]),
            True,
            r["stats"],
        )
        for r in rows
    ]
    name = os.path.basename(root.rstrip("/"))
    fault_point("lake.before_commit", name)
    t0 = time.perf_counter()
    for attempt in range(commit_retries + 1):
        try:
            _commit(
                root,
                schema,
                adds,
                mode=mode,
                partition_by=partition_by,
                ds=ds,
                exists=exists,
                metadata=commit_metadata,
                read_version=read_version,
            )
            break
        except (CommitFailedError, DeltaError) as e:
            # A concurrent writer won the race (CommitFailedError), or created the table first.
            raced = isinstance(e, CommitFailedError) or (not exists and table_exists(root))
            if not raced:
                raise
            if attempt == commit_retries or mode == "create":
                what = f"day {ds}" if mode == "overwrite_day" else f"mode {mode}"
                raise ConcurrentWriteError(
                    f"{root}: another writer committed while this job was writing ({what}); "
                    f"nothing of this write was committed (its {len(adds)} files are orphans "
                    f"that `jobs/maintain.py vacuum` removes). Re-run the job, or set "
                    f"lake.commit_retries to replace the other writer's rows. Cause: {e}"
                ) from e
            exists, read_version = table_exists(root), None  # retry: against the latest
    commit_seconds = time.perf_counter() - t0
    fault_point("lake.after_commit", name)
    n_rows = sum(json.loads(a.stats)["numRecords"] for a in adds)
    return WriteResult(root, table_version(root), len(adds), n_rows, commit_seconds)


def _commit(
    root: str,
    schema: pa.Schema,
    adds: list[AddAction],
    *,
    mode: WriteMode,
    partition_by: list[str],
    ds: str | None,
    exists: bool,
    metadata: Mapping[str, Any] | None = None,
    read_version: int | None = None,
) -> None:
    delta_schema = Schema.from_arrow(schema)
    props = CommitProperties(custom_metadata=dict(metadata)) if metadata else None
    if not exists:
        create_table_with_add_actions(
            root,
            delta_schema,
            adds,
            mode="error",
            partition_by=partition_by or None,
            commit_properties=props,
        )
        return
    table = DeltaTable(root, version=read_version)
    actions: list[AddAction | RemoveAction] = list(adds)
    if mode == "append":
        table.create_write_transaction(
            actions,
            mode="append",
            schema=delta_schema,
            partition_by=partition_by or None,
            commit_properties=props,
        )
    elif mode == "overwrite_day":
        table.create_write_transaction(
            actions,
            mode="overwrite",
            schema=delta_schema,
            partition_by=partition_by,
            partition_filters=[("ds", "=", str(ds))],
            commit_properties=props,
        )
    else:
        table.create_write_transaction(
            actions,
            mode="overwrite",
            schema=delta_schema,
            partition_by=partition_by or None,
            commit_properties=props,
        )


def _check_schema(root: str, schema: pa.Schema, partition_by: list[str]) -> None:
    table = DeltaTable(root)
    current = pa.schema(table.schema().to_arrow())
    have = [(f.name, f.type) for f in current]
    want = [(f.name, f.type) for f in schema]
    table_parts = list(table.metadata().partition_columns)
    problems = []
    if table_parts != partition_by:
        problems.append(f"partitioned by {table_parts}, write asks {partition_by}")
    if have != want:
        have_d, want_d = dict(have), dict(want)
        for name in have_d.keys() - want_d.keys():
            problems.append(f"column {name!r} missing from the DataFrame")
        for name in want_d.keys() - have_d.keys():
            problems.append(f"column {name!r} is not in the table")
        for name in have_d.keys() & want_d.keys():
            if have_d[name] != want_d[name]:
                problems.append(
                    f"column {name!r}: table has {have_d[name]}, DataFrame has {want_d[name]}"
                )
        if not problems:
            problems.append(
                f"column order differs: table {[n for n, _ in have]}, DataFrame {[n for n, _ in want]}"
            )
    if problems:
        raise SchemaMismatchError(
            f"{root}: schema mismatch, nothing written: " + "; ".join(sorted(problems))
        )


def _write_spark(
    df: DataFrame, root: str, *, mode: WriteMode, partition_by: list[str], ds: str | None
) -> WriteResult:
    writer = df.write.format("delta")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if mode == "overwrite_day":
        writer = writer.mode("overwrite").option("replaceWhere", f"ds = '{ds}'")
    else:
        writer = writer.mode(
            {"create": "errorifexists", "append": "append", "overwrite": "overwrite"}[mode]
        )
    writer.save(root)
    spark = df.sparkSession
    last = spark.sql(f"DESCRIBE HISTORY delta.`{root}` LIMIT 1").collect()[0]
    metrics = last["operationMetrics"] or {}
    return WriteResult(
        root,
        int(last["version"]),
        int(metrics.get("numFiles", 0)),
        int(metrics.get("numOutputRows", 0)),
    )


# --------------------------------------------------------------------------- read


def table_exists(root: str) -> bool:
    return bool(DeltaTable.is_deltatable(root))


def _open(root: str, version: int | None = None) -> DeltaTable:
    if not table_exists(root):
        raise LakeError(f"no Delta table at {root}")
    try:
        return DeltaTable(root, version=version)
    except Exception as e:  # delta-rs raises several types for a missing version
        raise LakeError(f"{root}: cannot open version {version}: {e}") from e


def table_version(root: str) -> int:
    return int(_open(root).version())


def table_files(root: str, version: int | None = None) -> list[str]:
    """URLs (``file://`` for local tables) of the data files of one table version."""
    uris = _open(root, version).file_uris()
    return [u if "://" in u else "file://" + os.path.abspath(u) for u in uris]


def history(root: str) -> list[dict[str, Any]]:
    return list(_open(root).history())


def commit_info(root: str, version: int) -> dict[str, Any]:
    """The custom metadata stored with commit ``version`` ({} when none, or not in history)."""
    for entry in _open(root).history():
        if int(entry.get("version", -1)) == version:
            return dict(entry)
    return {}


def vacuum(root: str, retention_hours: float, dry_run: bool = True) -> list[str]:
    """Delete files no version younger than ``retention_hours`` needs, and orphans (files of
    writes that never committed) older than that. Returns the files (to be) removed.

    The retention keeps readers of recent versions and writers still writing safe; callers
    check it against ``lake.min_vacuum_retention_hours`` (jobs/maintain.py does).
    """
    table = _open(root)
    return list(
        table.vacuum(
            retention_hours=int(retention_hours),
            dry_run=dry_run,
            enforce_retention_duration=False,
            full=True,
        )
    )


def read_table(
    spark: SparkSession, root: str, version: int | None = None, engine: Engine = "delta-rs"
) -> DataFrame:
    """One version of a table as a Spark DataFrame, partition columns restored, table column order."""
    if engine == "spark":
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(root)
    from pyspark.sql.pandas.types import from_arrow_schema

    table = _open(root, version)
    arrow_schema = pa.schema(table.schema().to_arrow())
    spark_schema = from_arrow_schema(arrow_schema)
    files = table.file_uris()
    if not files:
        return spark.createDataFrame([], spark_schema)
    base = root if "://" in root else os.path.abspath(root)
    df = spark.read.schema(spark_schema).option("basePath", base).parquet(*files)
    return df.select(*arrow_schema.names)


def query(
    sql: str, tables: Mapping[str, str], versions: Mapping[str, int] | None = None
) -> pa.Table:
    """Run SQL over Delta tables with delta-rs (DataFusion), no JVM: ``{name: root}``."""
    builder = QueryBuilder()
    for name, root in tables.items():
        builder.register(name, _open(root, (versions or {}).get(name)))
    result = builder.execute(sql).read_all()
    return _to_pyarrow(result)


def _to_pyarrow(table: Any) -> pa.Table:
    """arro3 table -> pyarrow 14 (which cannot import the Utf8View/BinaryView types)."""
    from arro3.core import Table as ArroTable

    cols = []
    for i in range(table.num_columns):
        col = table.column(i)
        plain = _without_views(col.type)
        cols.append(col if plain is None else col.cast(plain))
    return pa.table(ArroTable.from_arrays(cols, names=table.column_names))


def _without_views(t: Any) -> Any:
    """The same arro3 type with view types replaced by plain ones; None if there were none."""
    from arro3.core import DataType, Field

    if DataType.is_string_view(t):
        return DataType.string()
    if DataType.is_binary_view(t):
        return DataType.binary()
    if DataType.is_list(t) or DataType.is_large_list(t):
        inner = _without_views(t.value_type)
        if inner is None:
            return None
        field = Field(t.value_field.name, inner, nullable=True)
        return DataType.large_list(field) if DataType.is_large_list(t) else DataType.list(field)
    return None


# --------------------------------------------------------------------------- facade


@dataclasses.dataclass(frozen=True)
class Lake:
    """The project's tables under one root folder: ``<root>/<name>``."""

    root: str
    engine: Engine = "delta-rs"
    commit_retries: int = 0

    @classmethod
    def of(cls, conf: LakeConf) -> Lake:
        return cls(conf.root, conf.engine, conf.commit_retries)

    def path(self, name: str) -> str:
        return self.root.rstrip("/") + "/" + name

    def write(self, spark: SparkSession, df: DataFrame, name: str, **kwargs: Any) -> WriteResult:
        kwargs.setdefault("commit_retries", self.commit_retries)
        return write_table(spark, df, self.path(name), engine=self.engine, **kwargs)

    def read(self, spark: SparkSession, name: str, version: int | None = None) -> DataFrame:
        return read_table(spark, self.path(name), version, engine=self.engine)

    def exists(self, name: str) -> bool:
        return table_exists(self.path(name))

    def version(self, name: str) -> int:
        return table_version(self.path(name))

    def files(self, name: str, version: int | None = None) -> list[str]:
        return table_files(self.path(name), version)

    def history(self, name: str) -> list[dict[str, Any]]:
        return history(self.path(name))

    def vacuum(self, name: str, retention_hours: float, dry_run: bool = True) -> list[str]:
        return vacuum(self.path(name), retention_hours, dry_run=dry_run)

    def query(self, sql: str, names: Sequence[str]) -> pa.Table:
        return query(sql, {n: self.path(n) for n in names})

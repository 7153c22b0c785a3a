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
from cdtm.lake import spark_delta
from cdtm.lake._files import FILE_SCHEMA_DDL, write_files
from cdtm.lake.tables import DOCS, properties

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
    table_name: str | None = None,
    evolve: bool = False,
) -> WriteResult:
    """Write ``df`` to the Delta table at ``root`` as one commit.

    ``evolve``: the table's schema may grow by the columns ``df`` adds (older rows read them as
    null); a column of the table that ``df`` lacks, or holds with another type, is refused.

    ``overwrite_day`` replaces the partition ``ds`` (and fails if a row belongs to another
    day); ``overwrite`` replaces the whole table; ``create`` fails if the table exists.
    A schema that differs from the table's raises SchemaMismatchError before any file is
    written. A crash before the commit leaves the table exactly as it was.

    Two writers at once: the first commit wins; the other raises ConcurrentWriteError, or, with
    ``commit_retries`` > 0, commits again against the new version (its day replaces the
    winner's whole). ``commit_metadata`` is stored in the commit's ``userMetadata`` as JSON
    (``DESCRIBE HISTORY`` shows it; ``commit_info()`` reads it back, whichever engine wrote it).

    A table this creates gets the comment, column comments and properties of ``tables.DOCS``
    (deletion vectors off). With ``engine="spark"`` and a ``table_name`` it is also registered
    in the metastore in the same commit.

    ``transform`` (Arrow batches -> batches of ``transform_schema``, a DDL string) runs on the
    executors in the same Python worker that writes the files: what ``df.mapInArrow(transform,
    transform_schema)`` would give, without a second trip through the JVM.
    """
    partition_by = list(partition_by)
    if commit_retries < 0:
        raise LakeError(f"{root}: commit_retries must be >= 0, got {commit_retries}")
    if mode == "overwrite_day":
        if ds is None or partition_by != ["ds"]:
            raise LakeError(f"{root}: overwrite_day needs ds= and partition_by=['ds']")
    if evolve and table_exists(root):
        df = _in_table_order(df, root)
    if transform is not None:
        if transform_schema is None:
            raise LakeError(f"{root}: a transform needs its output schema (transform_schema)")
        mapped = df.mapInArrow(transform, transform_schema)
        if engine == "spark":
            df = mapped  # Spark's own writer: no fusing
            transform = None
    if engine == "spark":
        return _write_spark(
            df,
            root,
            mode=mode,
            partition_by=partition_by,
            ds=ds,
            commit_retries=commit_retries,
            metadata=commit_metadata,
            table_name=table_name,
            evolve=evolve,
        )

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
        _check_schema(root, schema, partition_by, evolve)

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
                evolve=evolve,
            )
            break
        except (CommitFailedError, DeltaError) as e:
            # A concurrent writer won the race (CommitFailedError), or created the table first.
            raced = isinstance(e, CommitFailedError) or (not exists and table_exists(root))
            if not raced:
                raise
            if attempt == commit_retries or mode == "create":
                detail = f"its {len(adds)} files are orphans that `jobs/maintain.py vacuum` removes"
                raise _lost_race(root, mode, ds, f"{detail}. Cause: {e}") from e
            exists, read_version = table_exists(root), None  # retry: against the latest
    commit_seconds = time.perf_counter() - t0
    fault_point("lake.after_commit", name)
    n_rows = sum(json.loads(a.stats)["numRecords"] for a in adds)
    return WriteResult(root, table_version(root), len(adds), n_rows, commit_seconds)


def _lost_race(root: str, mode: WriteMode, ds: str | None, detail: str) -> ConcurrentWriteError:
    what = f"day {ds}" if mode == "overwrite_day" else f"mode {mode}"
    return ConcurrentWriteError(
        f"{root}: another writer committed while this job was writing ({what}); nothing of "
        f"this write was committed ({detail}). Re-run the job, or set lake.commit_retries to "
        "replace the other writer's rows."
    )


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
    evolve: bool = False,
) -> None:
    props = (
        CommitProperties(
            custom_metadata={"userMetadata": json.dumps(dict(metadata), sort_keys=True)}
        )
        if metadata
        else None
    )
    if not exists:
        name = os.path.basename(root.rstrip("/"))
        doc = DOCS.get(name)
        create_table_with_add_actions(
            root,
            Schema.from_arrow(_commented(schema, name)),
            adds,
            mode="error",
            partition_by=partition_by or None,
            description=doc.comment if doc else None,
            # delta-rs accepts only delta.* keys: cdtm.* properties come with the Spark engine
            configuration={k: v for k, v in properties(name).items() if k.startswith("delta.")},
            commit_properties=props,
        )
        return
    table = DeltaTable(root, version=read_version)
    delta_schema = table.schema()  # the table's own (with its comments): names and types checked
    if evolve and len(schema) > len(delta_schema.fields):
        grown = pa.schema(delta_schema.to_arrow())
        for f in schema:
            if f.name not in grown.names:
                grown = grown.append(f)
        delta_schema = Schema.from_arrow(grown)
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


def _in_table_order(df: DataFrame, root: str) -> DataFrame:
    """``df``'s columns in the table's order, the ones it adds last; a table column that
    ``df`` lacks is refused by name (a column is never removed: older days hold it)."""
    have = [f.name for f in pa.schema(DeltaTable(root).schema().to_arrow())]
    missing = [c for c in have if c not in df.columns]
    if missing:
        raise SchemaMismatchError(
            f"{root}: columns {missing} of the table are not in this write, nothing written: "
            "a column is never removed (older days hold it). Keep the field in the dataset "
            "spec (a field a model no longer wants can stay in the table)."
        )
    return df.select(*have, *[c for c in df.columns if c not in have])


def _check_schema(
    root: str, schema: pa.Schema, partition_by: list[str], evolve: bool = False
) -> None:
    table = DeltaTable(root)
    current = pa.schema(table.schema().to_arrow())
    have = [(f.name, f.type) for f in current]
    want = [(f.name, f.type) for f in schema]
    if evolve:  # the columns the write adds join the table; the table's own must match
        want = [(n, t) for n, t in want if n in dict(have)]
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


def _commented(schema: pa.Schema, name: str) -> pa.Schema:
    """``schema`` with each known column's comment in its field metadata (Delta's place)."""
    doc = DOCS.get(name)
    if doc is None:
        return schema
    fields = []
    for f in schema:
        text = doc.column(f.name)
        fields.append(f.with_metadata({"comment": text}) if text else f)
    return pa.schema(fields)


def _with_comments(df: DataFrame, name: str) -> DataFrame:
    from pyspark.sql import functions as F

    doc = DOCS.get(name)
    if doc is None:
        return df
    cols = []
    for c in df.columns:
        text = doc.column(c)
        cols.append(F.col(c).alias(c, metadata={"comment": text}) if text else F.col(c))
    return df.select(*cols)


def _write_spark(
    df: DataFrame,
    root: str,
    *,
    mode: WriteMode,
    partition_by: list[str],
    ds: str | None,
    commit_retries: int,
    metadata: Mapping[str, Any] | None,
    table_name: str | None,
    evolve: bool = False,
) -> WriteResult:
    from pyspark.sql.pandas.types import to_arrow_schema

    spark = df.sparkSession
    name = os.path.basename(root.rstrip("/"))
    exists = table_exists(root)
    if exists and mode == "create":
        raise LakeError(f"{root}: table already exists (mode=create)")
    if exists:
        _check_schema(root, to_arrow_schema(df.schema), partition_by, evolve)
    else:
        df = _with_comments(df, name)
    df = spark_delta.hold_before_commit(df, name)
    doc = DOCS.get(name)
    t0 = time.perf_counter()
    for attempt in range(commit_retries + 1):
        try:
            spark_delta.write(
                df,
                root,
                mode=mode,
                partition_by=partition_by,
                ds=ds,
                metadata=metadata,
                table_name=table_name,
                comment=doc.comment if doc else None,
                properties=properties(name),
                merge_schema=evolve,
            )
            break
        except Exception as e:
            if spark_delta.replace_where_mismatch(e):
                raise LakeError(
                    f"{root}: overwrite_day replaces only ds={ds}, and the DataFrame holds rows "
                    "of another day; nothing was committed"
                ) from e
            conflict = spark_delta.conflict_name(e)
            if conflict is None:
                raise
            if attempt == commit_retries or mode == "create":
                raise _lost_race(root, mode, ds, conflict) from e
    commit_seconds = time.perf_counter() - t0
    fault_point("lake.after_commit", name)
    last = spark_delta.last_commit(spark, root)
    metrics = last.get("operationMetrics") or {}
    return WriteResult(
        root,
        int(last["version"]),
        int(metrics.get("numFiles", 0)),
        int(metrics.get("numOutputRows", 0)),
        commit_seconds,
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


def table_days(root: str, version: int | None = None) -> list[str]:
    """The ``ds`` partition values of one table version, in order."""
    return sorted({p["ds"] for p in _open(root, version).partitions() if p.get("ds")})


def table_files(
    root: str, version: int | None = None, days: Sequence[str] | None = None
) -> list[str]:
    """URLs (``file://`` for local tables) of the data files of one table version (of these
    ``ds`` partitions only, where ``days`` is given).

    A file list cannot see deletion vectors: a version whose files carry them (someone ran
    DELETE with ``delta.enableDeletionVectors`` on) would feed deleted rows to a reader of the
    files. That is refused, naming the fix.
    """
    table = _open(root, version)
    if "deletionVectors" in (table.protocol().reader_features or []):
        live = query("SELECT COUNT(*) AS n FROM t", {"t": root}, {"t": table.version()})
        in_files = sum(table.get_add_actions(flatten=True).column("num_records").to_pylist())
        if int(live.column("n")[0].as_py()) != in_files:
            raise LakeError(
                f"{root} version {table.version()}: rows were deleted with deletion vectors, "
                f"and a file list would read them back ({in_files:,} rows in files, "
                f"{int(live.column('n')[0].as_py()):,} live). Rewrite the files first: "
                "`python jobs/maintain.py purge --table <name>` (REORG TABLE ... APPLY (PURGE))."
            )
    uris = table.file_uris(
        file_pruning_predicate=[("ds", "in", list(days))] if days is not None else None
    )
    return [u if "://" in u else "file://" + os.path.abspath(u) for u in uris]


def has_deletion_vectors(root: str) -> bool:
    """Whether the table's protocol allows deletion vectors (their files must outlive a
    vacuum that does not know them)."""
    return "deletionVectors" in (_open(root).protocol().reader_features or [])


def history(root: str) -> list[dict[str, Any]]:
    return list(_open(root).history())


# Commits that change no rows: lineage is read from the data commit before them.
_MAINTENANCE = ("OPTIMIZE", "VACUUM", "REORG", "SET TBLPROPERTIES", "CHANGE COLUMN")


def commit_info(root: str, version: int) -> dict[str, Any]:
    """The commit that wrote the rows of ``version``, with the keys of its ``userMetadata``
    (JSON, either engine) merged in; {} when none is in history.

    Maintenance commits (OPTIMIZE, VACUUM, REORG) after a write are skipped, so a compacted
    version still names the lineage of the write it compacted.
    """
    for entry in sorted(_open(root).history(), key=lambda e: -int(e.get("version", -1))):
        if int(entry.get("version", -1)) > version:
            continue
        if str(entry.get("operation", "")).startswith(_MAINTENANCE):
            continue
        out = dict(entry)
        meta = out.get("userMetadata")
        if isinstance(meta, str) and meta.startswith("{"):
            try:
                out.update(json.loads(meta))
            except json.JSONDecodeError:
                pass  # someone else's free text: no lineage in it
        return out
    return {}


def vacuum(root: str, retention_hours: float, dry_run: bool = True) -> list[str]:
    """Delete files no version younger than ``retention_hours`` needs, and orphans (files of
    writes that never committed) older than that. Returns the files (to be) removed.

    The retention keeps readers of recent versions and writers still writing safe; callers
    check it against ``lake.min_vacuum_retention_hours`` (jobs/maintain.py does). delta-rs'
    vacuum does not know deletion-vector files and would delete live ones: a table that may
    carry them is refused (vacuum it with the Spark engine).
    """
    if has_deletion_vectors(root):
        raise LakeError(
            f"{root}: the table allows deletion vectors, whose files delta-rs' vacuum would "
            "delete while live; vacuum it with lake.engine=spark (Delta's own VACUUM)"
        )
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
        return spark_delta.read(spark, root, version)
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
    """The project's tables under one root folder: ``<root>/<name>``, registered in the
    metastore as ``[<catalog>.]<schema>.<name>`` where the session has Delta."""

    root: str
    engine: Engine = "delta-rs"
    commit_retries: int = 0
    catalog: str | None = None
    schema: str | None = None

    @classmethod
    def of(cls, conf: LakeConf) -> Lake:
        return cls(conf.root, conf.engine, conf.commit_retries, conf.catalog, conf.schema)

    def path(self, name: str) -> str:
        return self.root.rstrip("/") + "/" + name

    def table_name(self, name: str) -> str | None:
        """The metastore name of table ``name``; None when no schema is configured."""
        if not self.schema:
            return None
        return ".".join(p for p in (self.catalog, self.schema, name) if p)

    def write(
        self, spark: SparkSession, df: DataFrame, name: str, compact: bool = True, **kwargs: Any
    ) -> WriteResult:
        """Write one commit; with the Spark engine a day written with ``compact`` is then
        compacted (``OPTIMIZE ... WHERE ds``); every table ends up registered by name."""
        kwargs.setdefault("commit_retries", self.commit_retries)
        catalog = spark_delta.has_delta(spark) and self.schema is not None
        if catalog:
            self.ensure_schema(spark)
        res = write_table(
            spark,
            df,
            self.path(name),
            engine=self.engine,
            table_name=self.table_name(name) if catalog else None,
            **kwargs,
        )
        if compact and self.engine == "spark" and kwargs.get("mode") == "overwrite_day":
            spark_delta.optimize(spark, self.path(name), kwargs.get("ds"))
        if catalog:
            self.register(spark, name)
        return res

    def ensure_schema(self, spark: SparkSession) -> None:
        space = ".".join(p for p in (self.catalog, self.schema) if p)
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {space}")

    def register(self, spark: SparkSession, name: str) -> None:
        table_name = self.table_name(name)
        if table_name is None:
            return
        self.ensure_schema(spark)
        spark_delta.register(spark, table_name, self.path(name))

    def register_all(self, spark: SparkSession, names: Sequence[str]) -> list[str]:
        """Register the given tables (e.g. a lake written before names existed)."""
        for name in names:
            self.register(spark, name)
        return [n for n in (self.table_name(x) for x in names) if n]

    def read(self, spark: SparkSession, name: str, version: int | None = None) -> DataFrame:
        return read_table(spark, self.path(name), version, engine=self.engine)

    def exists(self, name: str) -> bool:
        return table_exists(self.path(name))

    def version(self, name: str) -> int:
        return table_version(self.path(name))

    def files(
        self, name: str, version: int | None = None, days: Sequence[str] | None = None
    ) -> list[str]:
        return table_files(self.path(name), version, days)

    def days(self, name: str, version: int | None = None) -> list[str]:
        return table_days(self.path(name), version)

    def history(self, name: str, spark: SparkSession | None = None) -> list[dict[str, Any]]:
        """Newest first: Delta's ``DESCRIBE HISTORY`` with the Spark engine, else delta-rs."""
        if self.engine == "spark" and spark is not None:
            return spark_delta.history(spark, self.path(name))
        return sorted(history(self.path(name)), key=lambda e: -int(e.get("version", -1)))

    def vacuum(
        self,
        name: str,
        retention_hours: float,
        dry_run: bool = True,
        spark: SparkSession | None = None,
    ) -> list[str]:
        if self.engine == "spark":
            if spark is None:
                raise LakeError(f"{self.path(name)}: vacuum with the Spark engine needs a session")
            return spark_delta.vacuum(spark, self.path(name), retention_hours, dry_run)
        return vacuum(self.path(name), retention_hours, dry_run=dry_run)

    def optimize(self, spark: SparkSession, name: str, ds: str | None = None) -> dict[str, Any]:
        return spark_delta.optimize(spark, self.path(name), ds)

    def purge_deletion_vectors(self, spark: SparkSession, name: str) -> None:
        spark_delta.purge_deletion_vectors(spark, self.path(name))

    def query(
        self, sql: str, names: Sequence[str], versions: Mapping[str, int] | None = None
    ) -> pa.Table:
        return query(sql, {n: self.path(n) for n in names}, versions)

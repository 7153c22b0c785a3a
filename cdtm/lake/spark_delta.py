"""Spark side of Delta Lake I/O (``lake.engine: spark``): delta-spark's own ``format("delta")``.

A day is replaced with ``replaceWhere`` in one commit; lineage goes in the commit's
``userMetadata`` (``DESCRIBE HISTORY`` shows it, delta-rs reads it back); reads at a version
use ``versionAsOf``; ``VACUUM``, ``OPTIMIZE`` and ``REORG`` run through Delta's SQL. Delta's
conflict exceptions become ConcurrentWriteError. The first write of a table registers it in the
metastore (``<schema>.<name>``, or ``<catalog>.<schema>.<name>`` on Unity Catalog) with its
comment and properties, in the same commit that creates it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cdtm.faults import ENV as FAULTS_ENV
from cdtm.faults import fault_point

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Delta's retryable conflicts (delta.exceptions); matched by name so that this module imports
# without delta-spark installed (Databricks ships its own classes of the same names).
_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "ConcurrentWriteException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "DeltaConcurrentModificationException",
)
_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
_session_conf_lock = threading.Lock()


def has_delta(spark: SparkSession) -> bool:
    """Whether this session can read and write ``format("delta")``."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return True
    return "DeltaSparkSessionExtension" in (spark.conf.get("spark.sql.extensions", "") or "")


def quoted_path(root: str) -> str:
    """``delta.`<root>``` for SQL over a table by its path."""
    path = root if "://" in root else os.path.abspath(root)
    return "delta.`" + path.replace("`", "``") + "`"


def conflict_name(e: BaseException) -> str | None:
    """The Delta conflict class behind ``e`` (a Py4J or pyspark error), or None."""
    text = f"{type(e).__name__} {getattr(e, 'desc', '')} {e}"
    return next((name for name in _CONFLICTS if name in text), None)


def replace_where_mismatch(e: BaseException) -> bool:
    return "DELTA_REPLACE_WHERE_MISMATCH" in str(e)


@contextmanager
def _user_metadata(spark: SparkSession, text: str | None) -> Iterator[None]:
    """Set the commit's userMetadata through the session (CTAS ignores the write option)."""
    if text is None:
        yield
        return
    with _session_conf_lock:
        spark.conf.set(_USER_METADATA, text)
        try:
            yield
        finally:
            spark.conf.unset(_USER_METADATA)


def hold_before_commit(df: DataFrame, name: str) -> DataFrame:
    """Pass rows through unchanged; each task then acts on ``lake.before_commit@<name>``.

    Delta's commit runs inside ``save()``, after every task has written its files: a task held
    (or killed) at the end of its rows is held before the commit. Executors do not see the
    driver's environment as it is now, so the driver's fault spec travels in the closure.
    """
    spec = os.environ.get(FAULTS_ENV)
    if not spec:
        return df

    def passthrough(batches: Iterable[Any]) -> Iterable[Any]:
        os.environ[FAULTS_ENV] = spec
        yield from batches
        fault_point("lake.before_commit", name)

    return df.mapInArrow(passthrough, df.schema)


def write(
    df: DataFrame,
    root: str,
    *,
    mode: str,
    partition_by: Sequence[str],
    ds: str | None,
    metadata: Mapping[str, Any] | None,
    table_name: str | None,
    comment: str | None,
    properties: Mapping[str, str],
    merge_schema: bool = False,
) -> None:
    """One Delta commit through Spark. A table that does not exist yet is created with its
    comment and properties, and registered as ``table_name`` when one is given.
    ``merge_schema``: the columns ``df`` adds join the table's schema."""
    from pyspark.sql import functions as F

    user_metadata = json.dumps(dict(metadata), sort_keys=True) if metadata else None
    spark = df.sparkSession
    exists = is_delta(spark, root)
    if not exists and table_name and _release(spark, table_name, root):
        writer = df.writeTo(table_name).using("delta")
        if partition_by:
            writer = writer.partitionedBy(*[F.col(c) for c in partition_by])
        writer = writer.tableProperty("location", _abs(root))
        if comment:
            writer = writer.tableProperty("comment", comment)
        for key, value in properties.items():
            writer = writer.tableProperty(key, value)
        with _user_metadata(spark, user_metadata):
            writer.create()
        return
    out = df.write.format("delta")
    if partition_by:
        out = out.partitionBy(*partition_by)
    if not exists:
        for key, value in properties.items():
            if key.startswith("delta."):  # only delta.* options become table properties
                out = out.option(key, value)
    if user_metadata:
        out = out.option("userMetadata", user_metadata)
    if merge_schema:
        out = out.option("mergeSchema", "true")
    if mode == "overwrite_day":
        out = out.mode("overwrite").option("replaceWhere", f"ds = '{ds}'")
    else:
        out = out.mode({"create": "errorifexists", "append": "append"}.get(mode, "overwrite"))
    out.save(_abs(root))


def is_delta(spark: SparkSession, root: str) -> bool:
    from delta.tables import DeltaTable

    return bool(DeltaTable.isDeltaTable(spark, _abs(root)))


def last_commit(spark: SparkSession, root: str) -> dict[str, Any]:
    row = spark.sql(f"DESCRIBE HISTORY {quoted_path(root)} LIMIT 1").collect()[0]
    return row.asDict()


def history(spark: SparkSession, root: str) -> list[dict[str, Any]]:
    """``DESCRIBE HISTORY``, newest first, as plain dicts."""
    return [
        r.asDict(recursive=True)
        for r in spark.sql(f"DESCRIBE HISTORY {quoted_path(root)}").collect()
    ]


def read(spark: SparkSession, root: str, version: int | None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(_abs(root))


def optimize(spark: SparkSession, root: str, ds: str | None = None) -> dict[str, Any]:
    """Compact small files (of one day when ``ds`` is given); returns Delta's metrics."""
    where = f" WHERE ds = '{ds}'" if ds else ""
    row = spark.sql(f"OPTIMIZE {quoted_path(root)}{where}").collect()[0]
    metrics = row["metrics"]
    return metrics.asDict(recursive=True) if metrics is not None else {}


def vacuum(spark: SparkSession, root: str, retention_hours: float, dry_run: bool) -> list[str]:
    """Delta's VACUUM (deletion-vector files stay while a live version needs them).

    The caller has checked the retention against lake.min_vacuum_retention_hours; Delta's own
    168-hour check is lifted for this statement only.
    """
    key = "spark.databricks.delta.retentionDurationCheck.enabled"
    sql = f"VACUUM {quoted_path(root)} RETAIN {float(retention_hours):g} HOURS"
    base = _abs(root).rstrip("/") + "/"
    with _session_conf_lock:
        before = spark.conf.get(key, "true")
        spark.conf.set(key, "false")
        try:
            listed = spark.sql(sql + " DRY RUN").collect()
            if not dry_run:
                spark.sql(sql).collect()
        finally:
            spark.conf.set(key, before or "true")
    return sorted(
        str(r[0]).removeprefix("file://").removeprefix("file:").removeprefix(base) for r in listed
    )


def purge_deletion_vectors(spark: SparkSession, root: str) -> None:
    """Rewrite the files that carry deletion vectors, so a file list holds only live rows."""
    spark.sql(f"REORG TABLE {quoted_path(root)} APPLY (PURGE)").collect()


def register(spark: SparkSession, table_name: str, root: str) -> None:
    """Make ``table_name`` name the Delta table at ``root`` (external: dropping it never deletes
    data). A name that points elsewhere (another lake, as in tests) is re-pointed."""
    if _release(spark, table_name, root):
        spark.sql(f"CREATE TABLE IF NOT EXISTS {table_name} USING DELTA LOCATION '{_abs(root)}'")


def _release(spark: SparkSession, table_name: str, root: str) -> bool:
    """Free ``table_name`` unless it already names ``root``; True when it is free now.

    Only an external registration is dropped (its data stays where it is); a managed table of
    that name is refused, since dropping it would delete its data.
    """
    space, short = table_name.rsplit(".", 1)
    if not any(r["tableName"] == short for r in spark.sql(f"SHOW TABLES IN {space}").collect()):
        return True
    kind, location = _type_and_location(spark, table_name)
    if location is not None and _same_location(location, _abs(root)) and is_delta(spark, root):
        return False
    if kind != "EXTERNAL":
        raise RuntimeError(
            f"{table_name} is a {kind} table at {location}, not {_abs(root)}: refusing to "
            "replace it (dropping a managed table deletes its data); choose another lake.schema"
        )
    spark.sql(f"DROP TABLE {table_name}")
    return True


def _type_and_location(spark: SparkSession, table_name: str) -> tuple[str, str | None]:
    """The metastore's own record (no Delta log is read: its folder may be gone)."""
    try:
        state = spark._jsparkSession.sessionState()
        ident = state.sqlParser().parseTableIdentifier(table_name)
        meta = state.catalog().getTableMetadata(ident)
        return str(meta.tableType().name()), str(meta.location())
    except Exception:  # noqa: BLE001 - a catalog without that API (Unity Catalog): ask SQL
        info = {
            r["col_name"]: r["data_type"]
            for r in spark.sql(f"DESCRIBE TABLE EXTENDED {table_name}").collect()
        }
        return str(info.get("Type", "UNKNOWN")), info.get("Location")


def _same_location(a: str, b: str) -> bool:
    def norm(p: str) -> str:
        return p.removeprefix("file://").removeprefix("file:").rstrip("/")

    return norm(a) == norm(b)


def _abs(root: str) -> str:
    return root if "://" in root or root.startswith("dbfs:") else os.path.abspath(root)

"""Delta Lake I/O for Spark DataFrames: the only place that knows how tables are stored.

Default engine ``delta-rs`` (no JVM Delta needed): executors write Parquet inside
``mapInArrow`` and the driver commits all files in ONE delta-rs transaction. Engine
``spark`` uses Spark's own ``format("delta")`` on clusters that ship it (Databricks).
"""

from cdtm.lake.delta import (
    ConcurrentWriteError,
    Lake,
    LakeError,
    SchemaMismatchError,
    WriteResult,
    commit_info,
    history,
    query,
    read_table,
    table_exists,
    table_files,
    table_version,
    vacuum,
    write_table,
)

__all__ = [
    "ConcurrentWriteError",
    "Lake",
    "LakeError",
    "SchemaMismatchError",
    "WriteResult",
    "commit_info",
    "history",
    "query",
    "read_table",
    "table_exists",
    "table_files",
    "table_version",
    "vacuum",
    "write_table",
]

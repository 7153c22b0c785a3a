"""Executor-side half of the Delta writer: runs inside ``mapInArrow``.

Each task writes one Parquet file per partition value it holds (partition columns live in
the path, not in the file) and yields one metadata row per file: path relative to the table
root, size, partition values, modification time and Delta statistics. Nothing is committed
here; the driver commits the files of successful tasks in one transaction, so the files of
failed or retried task attempts are never part of the table.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc  # imported explicitly: mapInArrow workers need it loaded
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from cdtm.faults import fault_point

FILE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("partition_values", pa.string()),
        ("modification_time", pa.int64()),
        ("stats", pa.string()),
    ]
)
FILE_SCHEMA_DDL = (
    "path string, size long, partition_values string, modification_time long, stats string"
)

_STATS_STRING_MAX = 64  # longer strings get no min/max (Delta would need truncation rules)


class _Stats:
    """Running Delta statistics (numRecords, minValues, maxValues, nullCount) of one file."""

    def __init__(self, schema: pa.Schema) -> None:
        self.rows = 0
        self.nulls = {f.name: 0 for f in schema}
        self.mins: dict[str, Any] = {}
        self.maxs: dict[str, Any] = {}
        self.skip = {f.name for f in schema if not _has_min_max(f.type)}

    def update(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        for name, col in zip(batch.schema.names, batch.columns):
            self.nulls[name] += col.null_count
            if name in self.skip or col.null_count == len(col):
                continue
            mm = pc.min_max(col)
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if isinstance(lo, float) and (math.isnan(lo) or math.isnan(hi)):
                self.skip.add(name)
                continue
            if isinstance(lo, str) and max(len(lo), len(hi)) > _STATS_STRING_MAX:
                self.skip.add(name)
                continue
            self.mins[name] = lo if name not in self.mins else min(self.mins[name], lo)
            self.maxs[name] = hi if name not in self.maxs else max(self.maxs[name], hi)

    def to_json(self) -> str:
        keep = [n for n in self.mins if n not in self.skip]
        return json.dumps(
            {
                "numRecords": self.rows,
                "minValues": {n: _json_value(self.mins[n]) for n in keep},
                "maxValues": {n: _json_value(self.maxs[n]) for n in keep},
                "nullCount": self.nulls,
            }
        )


def _has_min_max(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_string(t)
        or pa.types.is_date(t)
        or pa.types.is_timestamp(t)
    )


def _json_value(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        text = v.isoformat()
        return text + "Z" if getattr(v, "tzinfo", None) is None and "T" in text else text
    return v


def partition_dir(partition_by: Sequence[str], values: Sequence[str | None]) -> str:
    return "/".join(
        f"{c}={'__HIVE_DEFAULT_PARTITION__' if v is None else quote(v, safe='')}"
        for c, v in zip(partition_by, values)
    )


def write_files(
    batches: Iterable[pa.RecordBatch],
    *,
    root: str,
    txn: str,
    partition_by: Sequence[str],
    schema: pa.Schema,
    only_partition: dict[str, str] | None,
    transform: Callable[[Iterable[pa.RecordBatch]], Iterable[pa.RecordBatch]] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Write this task's rows (after ``transform``, if given) as Parquet under ``root``; yield
    one FILE_SCHEMA row per file."""
    from pyspark import TaskContext  # executor side only

    ctx = TaskContext.get()
    part_id, attempt = (ctx.partitionId(), ctx.attemptNumber()) if ctx else (0, 0)
    filesystem, base = pafs.FileSystem.from_uri(root)
    data_schema = pa.schema([f for f in schema if f.name not in partition_by])
    open_files: dict[tuple[str | None, ...], tuple[pq.ParquetWriter, str, _Stats]] = {}
    if transform is not None:
        batches = transform(batches)
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            batch = pa.Table.from_batches([batch]).cast(schema).combine_chunks().to_batches()[0]
            for key, part in _split_by_partition(batch, partition_by):
                if only_partition is not None:
                    want = tuple(only_partition[c] for c in partition_by)
                    if key != want:
                        raise ValueError(
                            f"row with partition {dict(zip(partition_by, key))} in a write that "
                            f"replaces only {only_partition}"
                        )
                if key not in open_files:
                    sub = partition_dir(partition_by, key)
                    rel = f"{sub}/" if sub else ""
                    rel += f"part-{txn}-{part_id:05d}-a{attempt}.parquet"
                    if sub:
                        filesystem.create_dir(f"{base}/{sub}", recursive=True)
                    writer = pq.ParquetWriter(
                        f"{base}/{rel}", data_schema, filesystem=filesystem, compression="snappy"
                    )
                    open_files[key] = (writer, rel, _Stats(data_schema))
                writer, _, stats = open_files[key]
                data = part.select(data_schema.names)
                writer.write_batch(data)
                stats.update(data)
                fault_point("lake.file_written", os.path.basename(root.rstrip("/")))
    finally:
        for writer, _, _ in open_files.values():
            writer.close()
    rows = []
    for key, (_, rel, stats) in open_files.items():
        info = filesystem.get_file_info(f"{base}/{rel}")
        mtime = info.mtime_ns // 1_000_000 if info.mtime_ns is not None else 0
        values = dict(zip(partition_by, key))
        rows.append((rel, info.size, json.dumps(values), mtime, stats.to_json()))
    if rows:
        yield pa.RecordBatch.from_arrays(
            [pa.array(list(col), type=f.type) for col, f in zip(zip(*rows), FILE_SCHEMA)],
            schema=FILE_SCHEMA,
        )


def _split_by_partition(
    batch: pa.RecordBatch, partition_by: Sequence[str]
) -> Iterator[tuple[tuple[str | None, ...], pa.RecordBatch]]:
    if not partition_by:
        yield (), batch
        return
    cols = [pc.cast(batch.column(c), pa.string()) for c in partition_by]
    if len(cols) == 1:
        key_col = cols[0]
    else:
        key_col = pc.binary_join_element_wise(*[pc.fill_null(c, "\x00") for c in cols], "\x1f")
    for value in pc.unique(key_col).to_pylist():
        mask = pc.is_null(key_col) if value is None else pc.equal(key_col, value)
        part = batch.filter(mask)
        if len(cols) == 1:
            key: tuple[str | None, ...] = (value,)
        else:
            key = tuple(None if v == "\x00" else v for v in str(value).split("\x1f"))
        yield key, part

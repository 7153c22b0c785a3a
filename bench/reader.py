"""Reader benchmark: Petastorm over a Delta snapshot -> Batches, vs pyarrow -> tensors.

Both read the training split of the same table version and yield shuffled Batches of the
same size; the baseline loads the Parquet files whole with pyarrow and shuffles in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from bench.common import log, timed
from cdtm.data.batch import Batch
from cdtm.data.reader import FeatureReader, ReaderConf
from cdtm.lake import Lake
from cdtm.spec import FeatureSpec, read_feature_spec


def snapshot(lake_root: str) -> tuple[list[str], FeatureSpec]:
    lake = Lake(lake_root)
    return lake.files("features"), read_feature_spec(lake.path("feature_spec"))


def arrow_batches(
    files: list[str], spec: FeatureSpec, split: str, batch_size: int, seed: int
) -> Iterator[Batch]:
    """The baseline: whole files through pyarrow, one permutation, slices as tensors."""
    cols = ["domain", "label", "split", "row_id", *spec.columns]
    paths = [f.removeprefix("file://") for f in files]
    table = pq.ParquetDataset(paths, use_legacy_dataset=False).read(columns=cols)
    mask = np.asarray(table.column("split").to_numpy(zero_copy_only=False) == split)
    arrays = {c: table.column(c).to_numpy()[mask] for c in cols if c != "split"}
    fields = torch.from_numpy(np.stack([arrays[f.column] for f in spec.fields], axis=1))
    dense = torch.from_numpy(
        np.stack([arrays[d.column] for d in spec.dense], axis=1).astype(np.float32)
    )
    domain = torch.from_numpy(arrays["domain"].astype(np.int64))
    label = torch.from_numpy(arrays["label"].astype(np.float32))
    row_id = torch.from_numpy(arrays["row_id"])
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(label)))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield Batch(domain[idx], label[idx], fields[idx], dense[idx], row_id[idx])


def _drain(batches: Iterator[Batch]) -> int:
    return sum(len(b) for b in batches)


def bench_reader(lake_root: str, repeats: int, batch_size: int = 4096) -> dict[str, Any]:
    files, spec = snapshot(lake_root)
    reader = FeatureReader(files, spec, "train", ReaderConf(batch_size=batch_size))
    _drain(reader.batches(seed=0))  # warm the page cache and imports for both sides
    pet_s, pet_all, pet_rows = timed(lambda: _drain(reader.batches(seed=1)), repeats, "petastorm")
    arr_s, arr_all, arr_rows = timed(
        lambda: _drain(arrow_batches(files, spec, "train", batch_size, 1)), repeats, "pyarrow"
    )
    if pet_rows != arr_rows:
        raise RuntimeError(f"petastorm read {pet_rows:,} rows, pyarrow {arr_rows:,}")
    out = {
        "rows": pet_rows,
        "files": len(files),
        "petastorm_seconds": round(pet_s, 3),
        "petastorm_seconds_all": [round(t, 3) for t in pet_all],
        "petastorm_rows_per_s": round(pet_rows / pet_s),
        "pyarrow_seconds": round(arr_s, 3),
        "pyarrow_seconds_all": [round(t, 3) for t in arr_all],
        "pyarrow_rows_per_s": round(arr_rows / arr_s),
        "ratio_vs_pyarrow": round(arr_s / pet_s, 4),
    }
    log(
        f"reader: petastorm {out['petastorm_rows_per_s']:,} rows/s, pyarrow "
        f"{out['pyarrow_rows_per_s']:,} rows/s, ratio {out['ratio_vs_pyarrow']}"
    )
    return out

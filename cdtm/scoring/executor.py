"""Executor-side scoring: runs inside ``mapInArrow`` on Spark's Python workers.

The model is loaded once per worker process from the artifact folder (manifest checked,
weights_only) and kept for every later batch of the same artifact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from cdtm.data.batch import Batch
from cdtm.model import CTRModel
from cdtm.spec import OOV_INDEX, FeatureSpec

SCORE_COLUMNS = (
    "ds string, row_id long, domain string, user_key string, item_key string, score double, "
    "model_version string, scored_at timestamp"
)

SCORE_NAMES = [c.split()[0] for c in SCORE_COLUMNS.split(", ")]

_LOADED: dict[str, tuple[CTRModel, FeatureSpec]] = {}


def _model(artifact: str) -> tuple[CTRModel, FeatureSpec]:
    if artifact not in _LOADED:
        from cdtm.model.base import flush_denormals
        from cdtm.train.artifacts import load_artifact

        flush_denormals()
        model, spec, _ = load_artifact(Path(artifact))
        torch.set_num_threads(1)  # one Spark task per core already
        _LOADED[artifact] = (model, spec)
    return _LOADED[artifact]


def batch_from_pandas(df: pd.DataFrame, spec: FeatureSpec) -> Batch:
    n = len(df)
    fields = (
        np.stack([df[f.column].to_numpy(np.int64) for f in spec.fields], axis=1)
        if spec.fields
        else np.zeros((n, 0), np.int64)
    )
    dense = (
        np.stack([df[d.column].to_numpy(np.float32) for d in spec.dense], axis=1)
        if spec.dense
        else np.zeros((n, 0), np.float32)
    )
    return Batch(
        domain=torch.from_numpy(df["domain"].to_numpy(np.int64)),
        label=torch.zeros(n),
        fields=torch.from_numpy(fields),
        dense=torch.from_numpy(dense),
        row_id=torch.zeros(n, dtype=torch.long),
    )


def batch_from_arrow(batch: pa.RecordBatch, spec: FeatureSpec) -> Batch:
    n = batch.num_rows

    def col(name: str, dtype: type) -> np.ndarray:
        return np.asarray(batch.column(name).to_numpy(zero_copy_only=False), dtype=dtype)

    fields = (
        np.stack([_seen(col(f.column, np.int64), f.vocab_size) for f in spec.fields], axis=1)
        if spec.fields
        else np.zeros((n, 0), np.int64)
    )
    dense = (
        np.stack([col(d.column, np.float32) for d in spec.dense], axis=1)
        if spec.dense
        else np.zeros((n, 0), np.float32)
    )
    return Batch(
        domain=torch.from_numpy(col("domain", np.int64)),
        label=torch.zeros(n),
        fields=torch.from_numpy(fields),
        dense=torch.from_numpy(dense),
        row_id=torch.zeros(n, dtype=torch.long),
    )


def _seen(index: np.ndarray, vocab_size: int) -> np.ndarray:
    """Indices the model has no embedding row for (values appended to the vocabulary after it
    was trained) read as out-of-vocabulary, never out of range."""
    return np.where(index >= vocab_size, OOV_INDEX, index)


def score_batches(
    batches: Iterable[pa.RecordBatch], artifact: str, model_version: str, scored_at: pd.Timestamp
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow``: keys pass through as Arrow arrays (no pandas round trip of strings)."""
    model, spec = _model(artifact)
    names = pa.array(spec.domains, pa.string())
    stamp = pa.scalar(scored_at.to_pydatetime(), pa.timestamp("us", tz="UTC"))
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        with torch.no_grad():
            scores = torch.sigmoid(model(batch_from_arrow(batch, spec))).double().numpy()
        yield pa.RecordBatch.from_arrays(
            [
                batch.column("ds"),
                batch.column("row_id"),
                names.take(batch.column("domain")),
                batch.column("user_key"),
                batch.column("item_key"),
                pa.array(scores, pa.float64()),
                pa.array(np.full(n, model_version, dtype=object), pa.string()),
                pa.array(np.full(n, stamp.value, dtype=np.int64), pa.timestamp("us", tz="UTC")),
            ],
            names=SCORE_NAMES,
        )

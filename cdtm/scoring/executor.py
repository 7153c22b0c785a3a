"""Executor-side scoring: runs inside ``mapInPandas`` on Spark's Python workers.

The model is loaded once per worker process from the artifact folder (manifest checked,
weights_only) and kept for every later batch of the same artifact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cdtm.data.batch import Batch
from cdtm.model import CTRModel
from cdtm.spec import FeatureSpec

SCORE_COLUMNS = (
    "ds string, row_id long, domain string, user_key string, item_key string, score double, "
    "model_version string, scored_at timestamp"
)

_LOADED: dict[str, tuple[CTRModel, FeatureSpec]] = {}


def _model(artifact: str) -> tuple[CTRModel, FeatureSpec]:
    if artifact not in _LOADED:
        from cdtm.train.artifacts import load_artifact

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


def score_batches(
    batches: Iterable[pd.DataFrame], artifact: str, model_version: str, scored_at: pd.Timestamp
) -> Iterator[pd.DataFrame]:
    model, spec = _model(artifact)
    names = np.array(spec.domains, dtype=object)
    for df in batches:
        if df.empty:
            continue
        with torch.no_grad():
            scores = torch.sigmoid(model(batch_from_pandas(df, spec))).double().numpy()
        yield pd.DataFrame(
            {
                "ds": df["ds"].to_numpy(),
                "row_id": df["row_id"].to_numpy(np.int64),
                "domain": names[df["domain"].to_numpy(np.int64)],
                "user_key": df["user_key"].to_numpy(),
                "item_key": df["item_key"].to_numpy(),
                "score": scores,
                "model_version": model_version,
                "scored_at": scored_at,
            }
        )

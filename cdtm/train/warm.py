"""Warm start: a new model starts from an earlier model's weights (``train.warm_start``).

The vocabulary only grows (``etl.vocab: extend``), so the earlier model's embedding rows are
the first rows of the new tables, by value: they are copied, and the rows of values added since
keep their fresh initialisation. Every other weight is copied where its shape is the same.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cdtm.spec import FeatureSpec, moved_values
from cdtm.train.artifacts import VOCAB_FILE, champion_artifact, load_artifact

log = logging.getLogger(__name__)


class WarmStartError(RuntimeError):
    """The earlier model cannot seed this one; the message says why."""


def warm_source(artifacts_root: Path, choice: str) -> Path:
    """``champion`` or a model version under ``artifacts.root``."""
    if choice == "champion":
        return champion_artifact(artifacts_root)
    path = Path(artifacts_root) / choice
    if not (path / "manifest.json").is_file():
        raise WarmStartError(f"train.warm_start={choice!r}: no artifact at {path}")
    return path


def warm_start(
    model: torch.nn.Module, spec: FeatureSpec, vocab: pa.Table | None, source: Path
) -> dict[str, int]:
    """Copy ``source``'s weights into ``model`` (trained on ``spec`` and ``vocab``, the lake's
    vocabulary now). Returns how many tensors were copied whole, by rows, and left as they were."""
    old, old_spec, _ = load_artifact(source)
    if old_spec.domains != spec.domains or [f.name for f in old_spec.fields] != [
        f.name for f in spec.fields
    ]:
        raise WarmStartError(
            f"train.warm_start: {source.name} was trained on domains {list(old_spec.domains)} "
            f"and fields {[f.name for f in old_spec.fields]}, this model has "
            f"{list(spec.domains)} and {[f.name for f in spec.fields]}"
        )
    _check_prefix(source, vocab)
    new_state = model.state_dict()
    counts = {"copied": 0, "rows": 0, "kept": 0}
    with torch.no_grad():
        for name, tensor in old.state_dict().items():
            target = new_state.get(name)
            if target is None:
                counts["kept"] += 1
            elif target.shape == tensor.shape:
                target.copy_(tensor)
                counts["copied"] += 1
            elif (
                target.dim() == tensor.dim()
                and target.shape[1:] == tensor.shape[1:]
                and target.shape[0] > tensor.shape[0]
            ):
                target[: tensor.shape[0]].copy_(tensor)  # embedding rows of the older values
                counts["rows"] += 1
            else:
                counts["kept"] += 1
    log.info(
        "warm start from %s: %d tensors copied, %d by their first rows, %d left fresh",
        source.name,
        counts["copied"],
        counts["rows"],
        counts["kept"],
    )
    return counts


def _check_prefix(source: Path, vocab: pa.Table | None) -> None:
    """Every value the earlier model knew keeps its index in the lake's vocabulary."""
    path = source / VOCAB_FILE
    if vocab is None or not path.is_file():
        raise WarmStartError(
            f"train.warm_start: {source.name} or the lake carries no vocabulary to match rows by"
        )
    moved = moved_values(pq.read_table(path).to_pandas(), vocab.to_pandas())
    if len(moved):
        r = moved.iloc[0]
        now = "absent" if pd.isna(r.lake_index) else int(r.lake_index)
        raise WarmStartError(
            f"train.warm_start: {len(moved):,} values of {source.name} have another index in "
            f"the lake's vocabulary now (e.g. {r.field}={r.value!r}: {r['index']} -> {now}); "
            "the vocabulary was "
            "rebuilt, so its embedding rows cannot be reused: train without warm_start"
        )

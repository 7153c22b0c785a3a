"""Petastorm over one version of the ``features`` table -> ``Batch`` iterators.

The driver hands over only the file list of a Delta table version; every process reads its
own shard of row groups (``cur_shard``/``shard_count``) with ``make_batch_reader`` and turns
the columns (numpy arrays) into Batches. Rows of other splits are dropped as they are read.
Shuffling: row-group order is shuffled by seed, then rows are shuffled inside a buffer of
``shuffle_buffer`` rows. With ``workers=0`` the reader is synchronous and the order is fully
determined by the seed (what checkpoint resume relies on).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from cdtm.data.batch import Batch
from cdtm.spec import FeatureSpec


# Petastorm 0.12.1 calls pyarrow's legacy dataset API (the pin that keeps pyarrow at 14, see
# ARCHITECTURE.md) and numpy/pandas idioms that warn FutureWarning/DeprecationWarning on
# every reader: pages of the same warning per epoch. Only warnings raised from petastorm's
# own modules are dropped; any other warning still shows.
def quiet_petastorm() -> None:
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"petastorm(\.|$)")
    # Two INFO lines per reader ("Failed loading Unischema ... Recovering rowgroup
    # information"): expected for a Delta table's Parquet files, printed every epoch.
    logging.getLogger("petastorm.etl.dataset_metadata").setLevel(logging.WARNING)


quiet_petastorm()


@functools.lru_cache(maxsize=65536)
def file_columns(url: str) -> frozenset[str] | None:
    """The columns of a Parquet file, from its footer, read once per process (a Delta data
    file never changes); None where the footer cannot be read (then: every column)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    try:
        fs, path = pafs.FileSystem.from_uri(url)
        return frozenset(pq.read_schema(path, filesystem=fs).names)
    except (OSError, ValueError, pa.ArrowException):
        return None


@dataclasses.dataclass(frozen=True)
class ReaderConf:
    batch_size: int = 4096
    shuffle_buffer: int = 200_000
    workers: int = 0  # 0 or 1: one read-ahead thread, order fixed by the seed; > 1: N threads
    domains: tuple[int, ...] | None = None  # keep rows of these domain ids only
    fractions: tuple[tuple[int, float], ...] = ()  # (domain id, share of its rows to keep)
    shuffled_labels: tuple[int, ...] = ()  # domain ids whose labels are permuted (experiments)
    flipped_labels: tuple[int, ...] = ()  # domain ids whose labels are inverted (experiments)


_HASH_MOD = 1_000_003


def keep_mask(cols: dict[str, np.ndarray], conf: ReaderConf) -> np.ndarray:
    """Rows kept by the domain filter and per-domain down-sampling (deterministic by row_id)."""
    keep = np.ones(len(cols["domain"]), dtype=bool)
    if conf.domains is not None:
        keep &= np.isin(cols["domain"], conf.domains)
    for d, frac in conf.fractions:
        u = (cols["row_id"] % _HASH_MOD) / _HASH_MOD
        keep &= (cols["domain"] != d) | (u < frac)
    return keep


def shuffle_labels(
    cols: dict[str, np.ndarray], domains: Sequence[int], rng: np.random.Generator
) -> None:
    """Permute the labels among each listed domain's rows, in place: the click rate stays, the
    link between features and label is gone (a deliberately useless source, issue #8)."""
    for d in domains:
        idx = np.flatnonzero(cols["domain"] == d)
        cols["label"][idx] = cols["label"][rng.permutation(idx)]


class FeatureReader:
    """Iterate one split of a table version as Batches, for one shard."""

    def __init__(
        self,
        files: Sequence[str],
        spec: FeatureSpec,
        split: str | None,
        conf: ReaderConf,
        cur_shard: int = 0,
        shard_count: int = 1,
        filtered: bool = False,
    ) -> None:
        """``split``: keep the rows whose ``split`` column has this value (None: every row).
        ``filtered``: apply the domain filter, down-sampling and label experiments of ``conf``
        (training rows only)."""
        if not files:
            raise ValueError("no data files: the features table version is empty")
        self.files = list(files)
        self.spec = spec
        self.split = split
        self.conf = conf
        self.cur_shard, self.shard_count = cur_shard, shard_count
        self.filtered = filtered
        self.columns = ["domain", "label", "split", "row_id", *spec.columns]
        self._dense = {d.column for d in spec.dense}
        self._groups: list[tuple[list[str], list[str]]] | None = None

    def _row_groups(self, seed: int | None) -> Iterator[dict[str, np.ndarray]]:
        from petastorm import make_batch_reader

        shuffle = seed is not None
        kwargs = dict(
            schema_fields=self.columns,
            num_epochs=1,
            shuffle_row_groups=shuffle,
            seed=seed if shuffle else None,
            cur_shard=self.cur_shard if self.shard_count > 1 else None,
            shard_count=self.shard_count if self.shard_count > 1 else None,
        )
        # One worker thread reads ahead and keeps the seeded order. Petastorm's "dummy" pool
        # would read in this thread, but it polls its queue with 0.1 s sleeps: 8x slower here.
        kwargs.update(reader_pool_type="thread", workers_count=max(self.conf.workers, 1))
        groups = self._schema_groups()
        if shuffle and len(groups) > 1:
            groups = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
        for files, missing in groups:
            kwargs["schema_fields"] = [c for c in self.columns if c not in missing]
            with make_batch_reader(files, **kwargs) as reader:
                for group in reader:
                    cols = group._asdict()
                    n = len(cols["label"])
                    for c in missing:  # a column added after these files: absent / 0
                        cols[c] = np.zeros(n, np.float32 if c in self._dense else np.int64)
                    kept = self._keep(cols)
                    if kept is not None:
                        yield kept

    def _keep(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The rows of this reader's split (and filters) of one row group; None if none."""
        keep = (
            cols["split"] == self.split
            if self.split is not None
            else np.ones(len(cols["split"]), bool)
        )
        if self.filtered:
            keep &= keep_mask(cols, self.conf)
            if self.conf.flipped_labels:
                flip = np.isin(cols["domain"], self.conf.flipped_labels)
                cols["label"] = np.where(flip, 1 - cols["label"], cols["label"])
        if not keep.any():
            return None
        return {c: v[keep] for c, v in cols.items() if c != "split"}

    def _schema_groups(self) -> list[tuple[list[str], list[str]]]:
        """The files by the reader's columns they lack (a field added to the table after
        they were written)."""
        if self._groups is None:
            by_missing: dict[tuple[str, ...], list[str]] = {}
            for f in self.files:
                names = file_columns(f)
                missing = tuple(c for c in self.columns if names is not None and c not in names)
                by_missing.setdefault(missing, []).append(f)
            self._groups = [(files, list(m)) for m, files in by_missing.items()]
        return self._groups

    def _to_batch(self, cols: dict[str, np.ndarray]) -> Batch:
        cat = [self.spec.fields[i].column for i in range(len(self.spec.fields))]
        fields = (
            np.stack([cols[c] for c in cat], axis=1)
            if cat
            else np.zeros((len(cols["label"]), 0), np.int64)
        )
        dense_cols = [d.column for d in self.spec.dense]
        dense = (
            np.stack([cols[c] for c in dense_cols], axis=1).astype(np.float32)
            if dense_cols
            else np.zeros((len(cols["label"]), 0), np.float32)
        )
        return Batch(
            domain=torch.from_numpy(cols["domain"].astype(np.int64)),
            label=torch.from_numpy(cols["label"].astype(np.float32)),
            fields=torch.from_numpy(fields.astype(np.int64, copy=False)),
            dense=torch.from_numpy(dense),
            row_id=torch.from_numpy(cols["row_id"].astype(np.int64)),
        )

    def batches(self, seed: int | None = None, drop_last: bool = False) -> Iterator[Batch]:
        """One pass over this shard. ``seed=None``: file order, no shuffling (evaluation)."""
        size = self.conf.batch_size
        rng = np.random.default_rng(seed) if seed is not None else None
        buffer: list[dict[str, np.ndarray]] = []
        buffered = 0
        limit = self.conf.shuffle_buffer if rng is not None else size

        def flush(final: bool) -> Iterator[Batch]:
            nonlocal buffer, buffered
            if not buffer:
                return
            merged = {c: np.concatenate([b[c] for b in buffer]) for c in buffer[0]}
            n = len(merged["label"])
            if self.filtered and self.conf.shuffled_labels and rng is not None:
                # Across the whole buffer (rows of many row groups, so of many users), anew
                # each epoch, seeded like the row order.
                shuffle_labels(merged, self.conf.shuffled_labels, rng)
            order = rng.permutation(n) if rng is not None else np.arange(n)
            usable = n if final else (n // size) * size
            for start in range(0, usable, size):
                idx = order[start : start + size]
                if len(idx) < size and drop_last:
                    break
                yield self._to_batch({c: v[idx] for c, v in merged.items()})
            rest = order[usable:]
            buffer = [{c: v[rest] for c, v in merged.items()}] if len(rest) else []
            buffered = len(rest)

        for group in self._row_groups(seed):
            buffer.append(group)
            buffered += len(group["label"])
            if buffered >= limit:
                yield from flush(final=False)
        yield from flush(final=True)

    def count(self) -> int:
        """Rows of this split in this shard (one pass over the label/split columns)."""
        return sum(len(g["label"]) for g in self._row_groups(None))

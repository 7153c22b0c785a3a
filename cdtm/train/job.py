"""Train one model from the lake's feature tables and write its artifact.

The driver reads only metadata: the feature spec and the file list of one version of the
``features`` table. Rows stream through Petastorm inside the training process(es).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from cdtm.config import Config, to_dict
from cdtm.data.batch import Batch
from cdtm.data.reader import FeatureReader, ReaderConf
from cdtm.lake import Lake
from cdtm.model import CDTM, build_model
from cdtm.model.base import flush_denormals
from cdtm.spec import FeatureSpec, day_generations, published_versions, read_feature_spec
from cdtm.train import plots
from cdtm.train.artifacts import write_artifact
from cdtm.train.distributed import Backend, SingleProcess
from cdtm.train.loop import FitResult, fit
from cdtm.train.metrics import flatten
from cdtm.train.transfer_report import transfer_report, write_transfer_report

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainInputs:
    """What a training process needs, small enough to ship to executors."""

    files: list[str]  # every file of the training window
    spec: FeatureSpec
    versions: dict[str, int]
    lake_root: str
    days: list[str] = dataclasses.field(default_factory=list)  # the window's days, in order
    # etl.split.method=days: the files of the days each split reads (train: every row of them;
    # valid, test: the held-out days' rows of that half). Empty: every split reads ``files``
    # and keeps the rows its ``split`` column names.
    split_files: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def reader_args(self, split: str) -> tuple[list[str], str | None]:
        """The files a split reads and the ``split`` value its rows must carry (None: all)."""
        if not self.split_files:
            return self.files, split
        return self.split_files[split], None if split == "train" else split


@dataclasses.dataclass
class LakeData:
    """DataSource over one features version: this process's shard of each split."""

    inputs: TrainInputs
    reader: ReaderConf
    rank: int = 0
    size: int = 1

    def _reader(self, split: str, filtered: bool = False) -> FeatureReader:
        files, rows = self.inputs.reader_args(split)
        return FeatureReader(
            files, self.inputs.spec, rows, self.reader, self.rank, self.size, filtered
        )

    def train_batches(self, seed: int) -> Iterator[Batch]:
        return self._reader("train", filtered=True).batches(seed)

    def train_steps(self) -> int:
        return -(-self._reader("train", filtered=True).count() // self.reader.batch_size)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        return self._reader(split).batches(None)


@dataclasses.dataclass
class TrainResult:
    model_version: str
    artifact: Path
    fit: FitResult
    metrics: dict[str, float | None]


def resolve_inputs(cfg: Config) -> TrainInputs:
    lake = Lake.of(cfg.lake)
    for table in ("features", "feature_spec", "vocab"):
        if not lake.exists(table):
            raise FileNotFoundError(
                f"no {table} table under {lake.root}: run the ETL first (jobs/etl.py)"
            )
    version = (
        cfg.train.features_version
        if cfg.train.features_version is not None
        else lake.version("features")
    )
    versions = published_versions(lake.root, version)
    days = window(lake.days("features", version), cfg.run.ds, cfg.train.window_days)
    check_one_vocabulary(lake.root, version, days)
    spec = read_feature_spec(lake.path("feature_spec"), versions["feature_spec"])
    files = lake.files("features", version, days)
    split_files: dict[str, list[str]] = {}
    if cfg.etl.split.method == "days":
        held = cfg.etl.split.holdout_days
        if len(days) <= held:
            raise ValueError(
                f"etl.split.method=days holds out the last {held} day(s) of the training "
                f"window, which has {len(days)} ({', '.join(days) or 'none'}) in features "
                f"v{version} under {lake.root}: it needs at least {held + 1} days (run the ETL "
                "of more days, or widen train.window_days)"
            )
        train_files = lake.files("features", version, days[:-held])
        held_files = lake.files("features", version, days[-held:])
        split_files = {"train": train_files, "valid": held_files, "test": held_files}
        log.info(
            "training window %s..%s: %d day(s) train, %s held out for validation and test",
            days[0],
            days[-1],
            len(days) - held,
            ", ".join(days[-held:]),
        )
    return TrainInputs(files, spec, versions, lake.root, days, split_files)


def window(days: list[str], ds: str, window_days: int | None) -> list[str]:
    """The stored days a training reads: all of them, or the ``window_days`` calendar days up
    to ``ds`` (those of them that are stored)."""
    if window_days is None:
        return days
    first = (dt.date.fromisoformat(ds) - dt.timedelta(days=window_days - 1)).isoformat()
    chosen = [d for d in days if first <= d <= ds]
    if not chosen:
        raise ValueError(
            f"train.window_days={window_days}: no stored day of the features table lies in "
            f"{first}..{ds} (stored: {days[0] + '..' + days[-1] if days else 'none'})"
        )
    return chosen


def trained_vocab(inputs: TrainInputs) -> pa.Table | None:
    """The vocabulary rows the model's embeddings were trained with (None without a table)."""
    lake = Lake(inputs.lake_root)
    if not lake.exists("vocab") or "vocab" not in inputs.versions:
        return None
    return lake.query(
        'SELECT field, value, "index" FROM vocab ORDER BY field, "index"',
        ["vocab"],
        {"vocab": inputs.versions["vocab"]},
    )


class MixedVocabularyError(RuntimeError):
    """The days of a features version were indexed with vocabularies whose indices differ."""


def check_one_vocabulary(
    lake_root: str, features_version: int, within: list[str] | None = None
) -> None:
    """Refuse days indexed with different vocabulary generations: the same index would mean
    different values in different days (a vocabulary built anew, not extended). ``within``:
    only these days are read."""
    days: dict[str, list[str]] = {}
    for ds, generation in sorted(day_generations(lake_root, features_version).items()):
        if within is None or ds in within:
            days.setdefault(generation, []).append(ds)
    if len(days) > 1:
        detail = "; ".join(
            f"generation {g}: {ds[0]}..{ds[-1]} ({len(ds)} days)" for g, ds in days.items()
        )
        raise MixedVocabularyError(
            f"features v{features_version} under {lake_root} mixes days indexed with different "
            f"vocabularies ({detail}): the same index means different values across them. "
            "Re-run the ETL of the older days with etl.vocab=extend, or train on one generation "
            "(train.features_version)."
        )


def reader_conf(cfg: Config, spec: FeatureSpec) -> ReaderConf:
    t = cfg.train
    ids = {name: i for i, name in enumerate(spec.domains)}
    named = set(t.train_domains or []) | set(t.domain_fraction)
    named |= set(t.shuffle_labels) | set(t.flip_labels)
    unknown = sorted(named - set(ids))
    if t.early_stop_domain is not None and t.early_stop_domain not in ids:
        unknown.append(t.early_stop_domain)
    if unknown:
        raise ValueError(
            f"train: unknown domains {unknown} (the feature spec has {list(spec.domains)})"
        )
    return ReaderConf(
        batch_size=t.batch_size,
        shuffle_buffer=t.shuffle_buffer,
        workers=t.reader_workers,
        domains=tuple(ids[d] for d in t.train_domains) if t.train_domains is not None else None,
        fractions=tuple((ids[d], f) for d, f in sorted(t.domain_fraction.items())),
        shuffled_labels=tuple(ids[d] for d in t.shuffle_labels),
        flipped_labels=tuple(ids[d] for d in t.flip_labels),
    )


def device_of(cfg: Config, local_rank: int = 0) -> torch.device:
    """CUDA (one GPU per process: the local rank's) when asked or available, else CPU."""
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but torch sees no CUDA device")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def run_key(cfg: Config, inputs: TrainInputs) -> str:
    """Stable id of a run (config + data): where its checkpoints live, so --resume finds them."""
    blob = json.dumps(
        {
            "model": to_dict(cfg.model),
            "train": to_dict(cfg.train),
            "versions": inputs.versions,
            "ds": cfg.run.ds,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def available_cores(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU quota
    (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), which torch's default ignores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota: float | None = None
    try:
        text = Path(cgroup_root, "cpu.max").read_text().split()
        if text and text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:
            q = int(Path(cgroup_root, "cpu", "cpu.cfs_quota_us").read_text())
            period = int(Path(cgroup_root, "cpu", "cpu.cfs_period_us").read_text())
            quota = q / period if q > 0 and period > 0 else None
        except (OSError, ValueError):
            pass
    if quota is not None:
        cores = min(cores or 1, max(1, math.ceil(quota)))
    return max(1, cores or 1)


def intra_op_threads(setting: int | str, local_processes: int) -> int:
    """``train.threads`` as a count (0: leave torch's default): ``auto`` is the cores this
    process may use (``available_cores``) shared by the training processes on this machine,
    at least 1. It cannot see other jobs' load: on a machine shared with other work, set a
    number (e.g. 1)."""
    if setting != "auto":
        return int(setting)
    return max(1, available_cores() // max(1, local_processes))


def train_model(
    cfg: Config,
    *,
    resume: bool = False,
    inputs: TrainInputs | None = None,
    backend: Backend | None = None,
    write: bool = True,
) -> TrainResult:
    """Train ``cfg.model`` on the lake's features; rank 0 writes the artifact."""
    flush_denormals()  # first: before torch's thread pool starts
    backend = backend or SingleProcess()
    inputs = inputs or resolve_inputs(cfg)
    threads = intra_op_threads(cfg.train.threads, getattr(backend, "local_size", 1))
    if threads:
        torch.set_num_threads(threads)
    device = device_of(cfg, getattr(backend, "local_rank", 0))
    torch.manual_seed(cfg.train.seed)
    model = build_model(inputs.spec, cfg.model)
    if cfg.train.warm_start:
        from cdtm.train.warm import warm_source, warm_start

        source = warm_source(Path(cfg.artifacts.root), cfg.train.warm_start)
        warm_start(model, inputs.spec, trained_vocab(inputs), source)
    reader = reader_conf(cfg, inputs.spec)
    data = LakeData(inputs, reader, backend.rank, backend.size)
    root = Path(cfg.artifacts.root)
    ckpt_dir = root / "_checkpoints" / run_key(cfg, inputs)
    if backend.is_main:
        log.info(
            "training %s on features v%d (%d files, %s), %d domains, %d fields, device %s, "
            "%d process(es)",
            cfg.model.name,
            inputs.versions["features"],
            len(inputs.files),
            f"{inputs.days[0]}..{inputs.days[-1]}" if inputs.days else "no days",
            len(inputs.spec.domains),
            len(inputs.spec.fields),
            device,
            backend.size,
        )
    result = fit(
        model,
        cfg.train,
        data,
        inputs.spec.domains,
        device=device,
        backend=backend,
        checkpoint_dir=ckpt_dir,
        resume=resume,
        lr_scale=float(backend.size) if cfg.train.scale_lr else 1.0,
        amp=cfg.train.amp and device.type == "cuda",
    )
    metrics = {**flatten("valid", result.valid), **flatten("test", result.test)}
    version = (
        cfg.train.model_version
        or f"{cfg.model.name}-{cfg.run.ds}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    )
    out = root / version
    if backend.is_main and write:
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(model, CDTM):
            # On this process's share of the validation rows (all of them in one process).
            report = transfer_report(model, data.eval_batches("valid"), inputs.spec, device)
            if report is not None:
                write_transfer_report(report, out)
        if cfg.train.plots:
            plots.training_curves(result.history, out / "training_curves.png")
            plots.domain_auc_bars(
                {k: v for k, v in result.test["auc"].items()}, out / "domain_auc.png"
            )
        data_info: dict[str, Any] = {
            "lake_root": inputs.lake_root,
            "versions": inputs.versions,
            "ds": cfg.run.ds,
        }
        write_artifact(
            out,
            model=model.cpu(),
            model_conf=cfg.model,
            spec=inputs.spec,
            vocab=trained_vocab(inputs),
            data=data_info,
            metrics=metrics,
            history=result.history,
            extra={
                "train": to_dict(cfg.train),
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "steps": result.steps,
                "seconds": result.seconds,
                "processes": backend.size,
            },
        )
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the artifact supersedes them
        log.info(
            "artifact %s: test AUC pooled %.4f", out, result.test["auc"]["pooled"] or float("nan")
        )
    return TrainResult(version, out, result, metrics)

"""Training benchmarks: the Petastorm feed's cost, CDTM vs the pooled DNN, memory as rows grow.

All use the real loop (``cdtm.train.loop.fit``) for one epoch; samples/s is the loop's own
count of training rows over the epoch's training time (evaluation excluded).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from bench.common import log, max_rss_mb, median, run_child, run_children
from bench.reader import arrow_batches, snapshot
from cdtm.config import Config, ModelConf, TrainConf, build, load_config, to_dict
from cdtm.data.batch import Batch
from cdtm.data.reader import FeatureReader, ReaderConf
from cdtm.model import build_model
from cdtm.model.base import flush_denormals
from cdtm.spec import FeatureSpec
from cdtm.train.job import intra_op_threads
from cdtm.train.loop import fit, parameter_groups


@dataclasses.dataclass
class MemoryData:
    """Training batches already in memory (the baseline feed)."""

    batches: list[Batch]
    valid: list[Batch]

    def train_batches(self, seed: int) -> Iterator[Batch]:
        return iter(self.batches)

    def train_steps(self) -> int:
        return len(self.batches)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        return iter(self.valid)


@dataclasses.dataclass
class PetastormData:
    files: list[str]
    spec: FeatureSpec
    conf: ReaderConf
    valid: list[Batch]

    def train_batches(self, seed: int) -> Iterator[Batch]:
        return FeatureReader(self.files, self.spec, "train", self.conf).batches(seed)

    def train_steps(self) -> int:
        rows = FeatureReader(self.files, self.spec, "train", self.conf).count()
        return -(-rows // self.conf.batch_size)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        return iter(self.valid)


def one_epoch(model_conf: ModelConf, train: TrainConf, spec: FeatureSpec, data: Any) -> float:
    return epoch_and_params(model_conf, train, spec, data)[0]


def epoch_and_params(
    model_conf: ModelConf, train: TrainConf, spec: FeatureSpec, data: Any
) -> tuple[float, int]:
    """Training samples/s of one epoch, and the model's parameter count."""
    torch.manual_seed(0)
    model = build_model(spec, model_conf)
    res = fit(model, train, data, spec.domains, device=torch.device("cpu"))
    return float(res.history[0]["train_rows_per_s"]), sum(p.numel() for p in model.parameters())


def bench_train(cfg: Config, lake_root: str, repeats: int, steps: int) -> dict[str, Any]:
    files, spec = snapshot(lake_root)
    train = dataclasses.replace(
        cfg.train, max_epochs=1, max_steps_per_epoch=steps, log_every=0, patience=1
    )
    batches = list(arrow_batches(files, spec, "train", train.batch_size, 0))[:steps]
    valid = list(arrow_batches(files, spec, "valid", train.batch_size, 0))[:1]
    memory = MemoryData(batches, valid)
    stream = PetastormData(files, spec, ReaderConf(train.batch_size, train.shuffle_buffer), valid)
    cdtm = dataclasses.replace(cfg.model, name="cdtm")
    pooled = dataclasses.replace(cfg.model, name="shared_bottom")
    one_epoch(cdtm, dataclasses.replace(train, max_steps_per_epoch=5), spec, memory)  # warm-up
    runs: dict[str, list[float]] = {"petastorm": [], "memory": [], "shared_bottom": []}
    for i in range(repeats):  # interleaved, so drift in machine load hits every side alike
        runs["petastorm"].append(one_epoch(cdtm, train, spec, stream))
        runs["memory"].append(one_epoch(cdtm, train, spec, memory))
        runs["shared_bottom"].append(one_epoch(pooled, train, spec, memory))
        log(
            f"train run {i + 1}/{repeats}: "
            + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in runs.items())
        )
    med = {k: median(v) for k, v in runs.items()}
    subnormal = subnormal_speedup(cfg, lake_root, repeats)
    threads = oversubscription_penalty(cfg, lake_root, repeats)
    out = {
        "steps": steps,
        "batch_size": train.batch_size,
        "samples_per_s_petastorm": round(med["petastorm"]),
        "samples_per_s_memory": round(med["memory"]),
        "samples_per_s_shared_bottom": round(med["shared_bottom"]),
        "runs": {k: [round(x) for x in v] for k, v in runs.items()},
        "feed_ratio": round(med["petastorm"] / med["memory"], 4),
        "cdtm_vs_shared_bottom": round(med["memory"] / med["shared_bottom"], 4),
        **subnormal,
        **threads,
    }
    log(f"train: feed ratio {out['feed_ratio']}, CDTM/pooled DNN {out['cdtm_vs_shared_bottom']}")
    return out


def subnormal_speedup(cfg: Config, lake_root: str, repeats: int) -> dict[str, Any]:
    """CDTM steps/s with subnormal weights, subnormals flushed (as training and scoring do) / kept.

    Each side runs in its own process: the CPU's flush mode is per thread, inherited by the
    threads a process starts after it is set.
    """
    runs: dict[str, list[float]] = {"kept": [], "flushed": []}
    for _ in range(repeats):
        for mode, rates in runs.items():
            args = {"subnormal": mode, "lake": lake_root, "batch_size": cfg.train.batch_size}
            rates.append(
                run_child("bench.train", {**args, "model": to_dict(cfg.model)})["steps_per_s"]
            )
    med = {k: median(v) for k, v in runs.items()}
    log(f"train: subnormal weights, steps/s kept {med['kept']:.2f}, flushed {med['flushed']:.2f}")
    return {
        "steps_per_s_subnormals_kept": round(med["kept"], 2),
        "steps_per_s_subnormals_flushed": round(med["flushed"], 2),
        "subnormal_flush_speedup": round(med["flushed"] / med["kept"], 2),
    }


def oversubscription_penalty(cfg: Config, lake_root: str, repeats: int) -> dict[str, Any]:
    """Two CDTM trainings at once on this machine, each told it is one of two local training
    processes (two Horovod ranks, or two jobs): torch's default intra-op threads in both (each
    takes every core) against ``train.threads=auto`` (each takes its share). The figure is
    their summed samples/s, auto / default."""
    runs: dict[str, list[float]] = {"default": [], "auto": []}
    base = {"lake": lake_root, "batch_size": cfg.train.batch_size, "model": to_dict(cfg.model)}
    for _ in range(repeats):
        for mode, rates in runs.items():
            outs = run_children("bench.train", [{**base, "threads": mode, "local": 2}] * 2)
            rates.append(sum(o["samples_per_s"] for o in outs))
            threads = outs[0]["threads"]
            log(f"train: 2 processes, {mode} threads ({threads} each): {rates[-1]:,.0f} samples/s")
    med = {k: median(v) for k, v in runs.items()}
    return {
        "samples_per_s_2_processes_default_threads": round(med["default"]),
        "samples_per_s_2_processes_auto_threads": round(med["auto"]),
        "threads_auto_each": intra_op_threads("auto", 2),
        "threads_default_each": torch.get_num_threads(),
        "oversubscription_penalty": round(med["auto"] / med["default"], 3),
    }


def _threads_child(args: dict[str, Any]) -> dict[str, Any]:
    """CDTM training steps (Adam, the loop's parameter groups) for about 3 s; samples/s."""
    flush_denormals()
    if args["threads"] == "auto":
        torch.set_num_threads(intra_op_threads("auto", args["local"]))
    files, spec = snapshot(args["lake"])
    batches = list(arrow_batches(files, spec, "train", args["batch_size"], 0))[:4]
    model_conf = build(ModelConf, {**args["model"], "name": "cdtm"}, prefix="model")
    torch.manual_seed(0)
    model = build_model(spec, model_conf)
    opt = torch.optim.Adam(parameter_groups(model, 1e-5), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rows, steps, t0 = 0, 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - t0 < 3.0:
        batch = batches[steps % len(batches)]
        logits, aux = model.forward_train(batch)
        loss = loss_fn(logits, batch.label) + sum(aux.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows += batch.label.shape[0]
        steps += 1
    return {"samples_per_s": rows / (time.perf_counter() - t0), "threads": torch.get_num_threads()}


def _subnormal_child(args: dict[str, Any]) -> dict[str, Any]:
    """Forward and backward passes of CDTM whose weights hold subnormals, as trained ones did
    (README, Performance): every weight below 1e-2 in size is scaled into the subnormal range."""
    if args["subnormal"] == "flushed":
        flush_denormals()
    torch.set_num_threads(1)
    files, spec = snapshot(args["lake"])
    batch = next(iter(arrow_batches(files, spec, "train", args["batch_size"], 0)))
    model_conf = build(ModelConf, {**args["model"], "name": "cdtm"}, prefix="model")
    torch.manual_seed(0)
    model = build_model(spec, model_conf)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.where(p.abs() < 1e-2, p * 1e-37, p))
    steps, t0 = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - t0 < 2.0:
        model.zero_grad()
        model(batch).sum().backward()
        steps += 1
    return {"steps_per_s": steps / (time.perf_counter() - t0)}


def memory_profile(lakes: dict[int, str], configs: list[str]) -> dict[str, Any]:
    """Peak RSS of a training process (its own process) streaming a whole epoch, per size."""
    out: dict[str, Any] = {}
    for rows, lake in sorted(lakes.items()):
        res = run_child("bench.train", {"lake": lake, "configs": configs})
        log(f"training process at {rows:,} rows: peak RSS {res['peak_rss_mb']} MB")
        out[str(rows)] = res
    small, large = min(lakes), max(lakes)
    big, base = out[str(large)], out[str(small)]
    out["peak_rss_mb"] = big["peak_rss_mb"]
    out["rss_growth"] = round(big["peak_rss_mb"] / base["peak_rss_mb"], 3)
    # The synthetic vocabularies grow with the rows (as real logs' do), so the model grows too;
    # the streamed data path is what must stay flat.
    out["rss_growth_without_model_state"] = round(
        big["rss_without_model_state_mb"] / base["rss_without_model_state_mb"], 3
    )
    return out


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """One full epoch of CDTM over the lake's training rows, streamed through Petastorm."""
    cfg = load_config(args["configs"])
    files, spec = snapshot(args["lake"])
    train = dataclasses.replace(cfg.train, max_epochs=1, log_every=0, patience=1)
    conf = ReaderConf(train.batch_size, train.shuffle_buffer)
    valid = [next(FeatureReader(files, spec, "valid", conf).batches(None))]
    data = PetastormData(files, spec, conf, valid)
    rate, params = epoch_and_params(dataclasses.replace(cfg.model, name="cdtm"), train, spec, data)
    # Weights, gradients, Adam's two moments, the best epoch's weights (kept for the restore)
    # and the weight average (train.ema), float32: grows with the vocabularies, not the rows.
    copies = 6 if train.ema else 5
    state_mb = round(copies * params * 4 / 2**20, 1)
    peak = max_rss_mb()
    return {
        "samples_per_s": round(rate),
        "peak_rss_mb": peak,
        "params": params,
        "model_state_mb": state_mb,
        "rss_without_model_state_mb": round(peak - state_mb, 1),
    }


if __name__ == "__main__":
    child_args = json.loads(sys.argv[1])
    if "subnormal" in child_args:
        run = _subnormal_child
    elif "threads" in child_args:
        run = _threads_child
    else:
        run = _child
    print(json.dumps(run(child_args)))

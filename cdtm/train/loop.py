"""The training loop (torch only): Adam, early stopping on validation AUC, checkpoints, resume.

The loop sees data through ``DataSource`` and other processes through ``Backend``, so the same
code runs in one process or as N Horovod ranks. Rank 0 alone writes checkpoints and logs.

Resume: the checkpoint holds the model, the optimizer, the loop state (epoch, step inside the
epoch, best metric, patience) and the torch RNG. Epoch e always reads its training rows in the
order fixed by ``seed`` and e, so a resumed run skips the steps it had done and continues on
exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from cdtm.config import TrainConf
from cdtm.data.batch import Batch
from cdtm.faults import fault_point
from cdtm.model.base import CTRModel
from cdtm.train import checkpoint
from cdtm.train.distributed import Backend, SingleProcess
from cdtm.train.metrics import ctr_metrics

log = logging.getLogger(__name__)

Metrics = dict[str, dict[str, float | None]]


class DataSource(Protocol):
    def train_batches(self, seed: int) -> Iterator[Batch]: ...

    def train_steps(self) -> int:
        """Training batches this process reads per epoch."""
        ...

    def eval_batches(self, split: str) -> Iterator[Batch]: ...


@dataclasses.dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    steps: int
    history: list[dict[str, Any]]
    valid: Metrics
    test: Metrics
    seconds: float


def _padded(batches: Iterator[Batch], steps: int | None) -> Iterator[Batch | None]:
    """Exactly ``steps`` items: the batches, then None once they run out (None: the batches)."""
    if steps is None:
        yield from batches
        return
    n = 0
    for b in batches:
        if n == steps:
            return
        yield b
        n += 1
    for _ in range(steps - n):
        yield None


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def predict(
    model: CTRModel, batches: Iterator[Batch], device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, click probabilities and domains of every row (this process's shard)."""
    model.eval()
    labels, probs, domains = [], [], []
    with torch.no_grad():
        for b in batches:
            b = b.to(device)
            probs.append(torch.sigmoid(model(b)).float().cpu())
            labels.append(b.label.cpu())
            domains.append(b.domain.cpu())
    if not labels:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return torch.cat(labels).numpy(), torch.cat(probs).numpy(), torch.cat(domains).numpy()


def evaluate(
    model: CTRModel,
    batches: Iterator[Batch],
    domains: Sequence[str],
    device: torch.device,
    backend: Backend,
) -> Metrics:
    y, p, d = predict(model, batches, device)
    # Every rank contributes its shard; metrics are computed on the union, identically on all ranks.
    y = backend.gather_arrays(torch.from_numpy(y)).numpy()
    p = backend.gather_arrays(torch.from_numpy(p)).numpy()
    d = backend.gather_arrays(torch.from_numpy(d)).numpy()
    return ctr_metrics(y, p, d, domains)


def domain_weights(conf: TrainConf, domains: Sequence[str]) -> torch.Tensor | None:
    """Each domain's loss weight, by domain index; None: the plain mean over rows."""
    if conf.loss_weighting == "rows" and not conf.domain_loss_weights:
        return None
    unknown = sorted(set(conf.domain_loss_weights) - set(domains))
    if unknown:
        raise ValueError(
            f"train.domain_loss_weights: unknown domains {unknown} "
            f"(the feature spec has {list(domains)})"
        )
    return torch.tensor([float(conf.domain_loss_weights.get(d, 1.0)) for d in domains])


def click_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    domain: torch.Tensor,
    weighting: str,
    weights: torch.Tensor | None,
) -> torch.Tensor:
    """BCE over a batch, every row alike (``rows``) or every domain present alike (``domains``).

    ``weights`` [D] scale a domain's rows (``rows``) or its mean (``domains``); the result is
    divided by the total weight, so it stays on the scale of one mean BCE. None: the plain mean.
    """
    if weights is None:
        return F.binary_cross_entropy_with_logits(logits, label)
    per_row = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
    w = weights.to(per_row)
    if weighting == "rows":
        row_w = w[domain]
        return (per_row * row_w).sum() / row_w.sum().clamp_min(1e-12)
    onehot = F.one_hot(domain, w.numel()).to(per_row)  # [B, D]
    counts = onehot.sum(0)
    w = w * (counts > 0)  # a domain absent from the batch has no mean
    means = (per_row @ onehot) / counts.clamp_min(1)
    return (w * means).sum() / w.sum().clamp_min(1e-12)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Adam's groups: weight decay on every parameter but those the model exempts (CDTM's gate
    and transfer matrix, whose decay pulls them where the data does not)."""
    exempt = set(getattr(model, "no_decay_parameters", lambda: [])())
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    unknown = exempt - {n for n, _ in named}
    if unknown:
        raise ValueError(f"no_decay_parameters names no trainable parameter: {sorted(unknown)}")
    groups = [
        {"params": [p for n, p in named if n not in exempt], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def weight_average(decay: float) -> Any:
    """AveragedModel's update for a moving average of the weights with a warm-up.

    The t-th weights enter with weight max(1 / t, 1 - decay): the mean of every step's weights
    until t = 1 / (1 - decay), then an exponential average with ``decay`` per step. A run
    shorter than that horizon gets the mean of its steps, not an average still mostly made of
    its first weights (which a plain exponential average started from them would be).
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        # n weights averaged so far (n >= 1: AveragedModel copies the first ones)
        torch._foreach_lerp_(averaged, current, max(1.0 / (float(n) + 1.0), 1.0 - decay))

    return update


def fit(
    model: CTRModel,
    conf: TrainConf,
    data: DataSource,
    domains: Sequence[str],
    *,
    device: torch.device,
    backend: Backend | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    lr_scale: float = 1.0,
    amp: bool = False,
) -> FitResult:
    """Train until early stopping or ``max_epochs``; return metrics of the best epoch's model.

    Shards differ in size, and a rank that stopped stepping would leave the others waiting
    forever in their next allreduce. So all ranks run the same number of steps per epoch (the
    largest shard's), and a rank whose shard is done steps on empty batches, which add zero
    gradients: every training row is used exactly once per epoch and no rank hangs.
    """
    backend = backend or SingleProcess()
    start = time.time()
    torch.manual_seed(conf.seed)
    model.to(device)
    # Fused Adam: one kernel over all parameters; with dense embedding gradients the unfused
    # update was a third of a CPU step (bench/, "train").
    optimizer: torch.optim.Optimizer = torch.optim.Adam(
        parameter_groups(model, conf.weight_decay),
        lr=conf.lr * lr_scale,
        fused=True,
    )
    state: dict[str, Any] = {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "best": -math.inf,
        "best_epoch": -1,
        "bad_epochs": 0,
        "done": False,
        "history": [],
    }
    best_state = copy.deepcopy(model.state_dict())
    # Weight averaging: validation, early stopping and the artifact use the average, which the
    # optimizer's steps feed; on MovieLens-1M it lifts every model's test AUC (README). The
    # decay is per batch of rows: a step of N ranks takes N batches, so its decay is ema ** N
    # and the average spans as many rows (as many epochs) whatever the number of ranks.
    averaged = (
        AveragedModel(model, multi_avg_fn=weight_average(conf.ema**backend.size))
        if conf.ema
        else None
    )
    last = checkpoint_dir / "last.pt" if checkpoint_dir else None
    if resume and last is not None and last.exists():
        saved = checkpoint.load(last)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if averaged is not None and "averaged" in saved:  # else: averaging starts now
            averaged.load_state_dict(saved["averaged"])
        state = saved["state"]
        torch.set_rng_state(saved["rng"])
        best_path = last.with_name("best.pt")
        if best_path.exists():
            best_state = checkpoint.load(best_path)["model"]
        if backend.is_main:
            log.info(
                "resumed from %s: epoch %d, step %d", last, state["epoch"], state["step_in_epoch"]
            )
    state = backend.broadcast_object(state)  # ranks without the checkpoint file follow rank 0
    backend.broadcast_state(model, optimizer)
    if averaged is not None:
        backend.broadcast_state(averaged)
    optimizer = backend.wrap_optimizer(optimizer, model)
    key = conf.early_stop_domain or "pooled"
    loss_weights = domain_weights(conf, domains)
    if loss_weights is not None:
        loss_weights = loss_weights.to(device)

    def save_checkpoint() -> None:
        if last is not None and backend.is_main:
            checkpoint.save(
                last,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    **({"averaged": averaged.state_dict()} if averaged is not None else {}),
                    "state": state,
                    "rng": torch.get_rng_state(),
                },
            )

    # Agreeing on a step count costs a pass over the shard: only several ranks need it.
    steps = backend.allreduce_max(data.train_steps()) if backend.size > 1 else None
    if conf.max_steps_per_epoch:
        steps = (
            min(steps, conf.max_steps_per_epoch) if steps is not None else conf.max_steps_per_epoch
        )

    while not state["done"] and state["epoch"] < conf.max_epochs:
        epoch = state["epoch"]
        model.train()
        t0, rows, loss_sum, loss_n = time.time(), 0, 0.0, 0
        for i, batch in enumerate(_padded(data.train_batches(epoch_seed(conf.seed, epoch)), steps)):
            if i < state["step_in_epoch"]:
                continue  # done before the interruption
            if batch is None:  # this shard is done: a zero-gradient step keeps the ranks in step
                total = torch.stack([p.sum() for p in model.parameters()]).sum() * 0.0
                loss = torch.zeros(())
                batch_rows = 0
            else:
                batch = batch.to(device)
                batch_rows = len(batch)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits, aux = model.forward_train(batch)
                loss = click_loss(
                    logits.float(), batch.label, batch.domain, conf.loss_weighting, loss_weights
                )
                total = loss + sum(aux.values()) if aux else loss
            optimizer.zero_grad()  # Horovod's wrapper takes no arguments
            total.backward()
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(model)
            state["step_in_epoch"] = i + 1
            state["global_step"] += 1
            fault_point("train.step", state["global_step"])
            rows += batch_rows
            if batch_rows:
                loss_sum += float(loss.detach())
                loss_n += 1
            if conf.checkpoint_every and state["global_step"] % conf.checkpoint_every == 0:
                save_checkpoint()
            if conf.log_every and state["global_step"] % conf.log_every == 0 and backend.is_main:
                log.info(
                    "rank %d epoch %d step %d: loss %.4f, %.0f rows/s",
                    backend.rank,
                    epoch,
                    state["step_in_epoch"],
                    loss_sum / max(loss_n, 1),
                    rows * backend.size / max(time.time() - t0, 1e-9),
                )
        train_seconds = time.time() - t0
        if averaged is not None:
            # Buffers (STAR's normalisation statistics) are not averaged: the model's own, taken
            # once here, where the averaged model is evaluated and kept.
            for avg_buf, live in zip(averaged.module.buffers(), model.buffers()):
                avg_buf.copy_(live)
        kept = cast(CTRModel, averaged.module) if averaged is not None else model
        valid = evaluate(kept, data.eval_batches("valid"), domains, device, backend)
        metric = valid["auc"][key]
        score = metric if metric is not None else -math.inf
        improved = score > state["best"]
        if improved:
            state.update(best=score, best_epoch=epoch, bad_epochs=0)
            best_state = copy.deepcopy(kept.state_dict())
            if last is not None and backend.is_main:
                checkpoint.save(last.with_name("best.pt"), {"model": best_state})
        else:
            state["bad_epochs"] += 1
        state["history"].append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / max(loss_n, 1),
                "train_rows_per_s": rows * backend.size / max(train_seconds, 1e-9),
                "valid_auc": valid["auc"],
                "valid_logloss": valid["logloss"],
            }
        )
        if backend.is_main:
            log.info(
                "epoch %d: train loss %.4f, valid auc %s %s%s",
                epoch,
                loss_sum / max(loss_n, 1),
                key,
                f"{score:.4f}",
                " (best)" if improved else f" (no gain {state['bad_epochs']}/{conf.patience})",
            )
        state["epoch"] = epoch + 1
        state["step_in_epoch"] = 0
        if state["bad_epochs"] >= conf.patience:
            state["done"] = True
        save_checkpoint()

    model.load_state_dict(best_state)
    backend.broadcast_state(model, optimizer)  # after a resume only rank 0 may have read best.pt
    valid = evaluate(model, data.eval_batches("valid"), domains, device, backend)
    test = evaluate(model, data.eval_batches("test"), domains, device, backend)
    return FitResult(
        best_epoch=int(state["best_epoch"]),
        epochs_run=int(state["epoch"]),
        steps=int(state["global_step"]),
        history=list(state["history"]),
        valid=valid,
        test=test,
        seconds=round(time.time() - start, 2),
    )

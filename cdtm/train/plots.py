"""PNG plots of a training run: curves per epoch and per-domain AUC bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(history: list[dict[str, Any]], path: Path) -> None:
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], marker="o")
    a.set(title="train loss (BCE)", xlabel="epoch")
    for name in history[0]["valid_auc"]:
        b.plot(epochs, [h["valid_auc"][name] for h in history], marker="o", label=name)
    b.set(title="validation AUC", xlabel="epoch")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def domain_auc_bars(test_auc: dict[str, float | None], path: Path, title: str = "test AUC") -> None:
    names = list(test_auc)
    values = [test_auc[n] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
    ax.bar(names, values, color="#4477aa")
    lo = min(v for v in values if v > 0) if any(values) else 0.5
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(values) + 0.02))
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    ax.set(title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Per-domain and pooled AUC and logloss (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def ctr_metrics(
    labels: np.ndarray, probs: np.ndarray, domains: np.ndarray, names: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """{"auc": {"pooled": x, "<domain>": y}, "logloss": {...}, "rows": {...}}; None where undefined."""
    out: dict[str, dict[str, float | None]] = {"auc": {}, "logloss": {}, "rows": {}}
    groups = [("pooled", np.ones_like(labels, dtype=bool))]
    groups += [(name, domains == d) for d, name in enumerate(names)]
    for name, mask in groups:
        y, p = labels[mask], np.clip(probs[mask], 1e-7, 1 - 1e-7)
        out["rows"][name] = float(mask.sum())
        if len(y) == 0:
            out["auc"][name] = out["logloss"][name] = None
            continue
        out["auc"][name] = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None
        out["logloss"][name] = float(log_loss(y, p, labels=[0, 1]))
    return out


def flatten(prefix: str, metrics: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """{"auc": {"pooled": x}} -> {"<prefix>.auc.pooled": x} (the metrics.json key format)."""
    return {f"{prefix}.{kind}.{name}": v for kind, d in metrics.items() for name, v in d.items()}

"""Drift in the nightly summary, per domain: the day's input volume and CTR against the mean of
the trailing days, the population stability index (PSI) of the scores against the previous
scored night, and of each field's value distribution against the previous day.

Everything is aggregated in SQL over the Delta tables (delta-rs, no JVM): a score histogram
of ``BINS`` bins of logit(score), and per field the counts of its values. PSI over scores uses
10 buckets of equal mass in the reference night; over a field, the reference day's 20 most
frequent values and one bucket for the rest.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdtm.config import DriftConf
from cdtm.lake import Lake
from cdtm.spec import FeatureSpec

log = logging.getLogger(__name__)
BINS, LOGIT_LO, LOGIT_HI = 200, -8.0, 8.0
_EPS = 1e-4


class DriftError(RuntimeError):
    """Drift above the thresholds with ``pipeline.fail_on_drift`` set (the summary is written)."""


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of two count vectors over the same buckets: sum (q - p) ln(q / p), shares floored at
    1e-4 so that an empty bucket counts but does not make it infinite."""
    p = np.maximum(reference / max(reference.sum(), 1), _EPS)
    q = np.maximum(current / max(current.sum(), 1), _EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def score_psi(reference: np.ndarray, current: np.ndarray, buckets: int = 10) -> float:
    """PSI of two fine score histograms, merged into ``buckets`` of equal reference mass."""
    mid = (np.cumsum(reference) - reference / 2) / max(reference.sum(), 1)
    group = np.minimum((mid * buckets).astype(int), buckets - 1)
    return psi(np.bincount(group, reference, buckets), np.bincount(group, current, buckets))


def value_psi(reference: dict[Any, int], current: dict[Any, int], top: int = 20) -> float:
    """PSI over the reference's ``top`` most frequent values and one bucket for the rest."""
    keys = sorted(reference, key=lambda k: -reference[k])[:top]

    def counts(c: dict[Any, int]) -> np.ndarray:
        head = [c.get(k, 0) for k in keys]
        return np.array([*head, sum(c.values()) - sum(head)], dtype=float)

    return psi(counts(reference), counts(current))


def _score_histograms(lake: Lake, days: Sequence[str]) -> dict[tuple[str, str], np.ndarray]:
    if not days or not lake.exists("scores"):
        return {}
    width = BINS / (LOGIT_HI - LOGIT_LO)
    listed = ", ".join(f"'{d}'" for d in days)
    rows = lake.query(
        f"SELECT ds, domain, CAST(FLOOR((LN(s / (1 - s)) - ({LOGIT_LO})) * {width}) AS BIGINT)"
        " AS b, COUNT(*) AS n FROM (SELECT ds, domain,"
        " LEAST(GREATEST(score, 1e-6), 0.999999) AS s FROM scores"
        f" WHERE ds IN ({listed})) t GROUP BY ds, domain, b",
        ["scores"],
    ).to_pylist()
    out: dict[tuple[str, str], np.ndarray] = {}
    for r in rows:
        h = out.setdefault((r["ds"], r["domain"]), np.zeros(BINS))
        h[min(max(int(r["b"]), 0), BINS - 1)] += int(r["n"])
    return out


def _field_counts(
    lake: Lake, column: str, days: Sequence[str]
) -> dict[tuple[str, int], dict[int, int]]:
    listed = ", ".join(f"'{d}'" for d in days)
    rows = lake.query(
        f"SELECT ds, domain, {column} AS v, COUNT(*) AS n FROM features "
        f"WHERE ds IN ({listed}) GROUP BY ds, domain, {column}",
        ["features"],
    ).to_pylist()
    out: dict[tuple[str, int], dict[int, int]] = {}
    for r in rows:
        # A field added after a day was written reads null there: absent, index 0.
        out.setdefault((r["ds"], int(r["domain"])), {})[int(r["v"] or 0)] = int(r["n"])
    return out


def _ratio(today: float | None, before: list[float]) -> float | None:
    if today is None or not before:
        return None
    mean = sum(before) / len(before)
    return round(today / mean, 6) if mean > 0 else None


def drift_report(
    lake_root: str, spec: FeatureSpec, ds: str, conf: DriftConf, plot: Path | None = None
) -> dict[str, dict[str, Any]]:
    """``{domain: {volume, volume_ratio, ctr, ctr_ratio, score_psi, field_psi, flagged,
    reasons}}`` for day ``ds``; a ratio or PSI without history to compare with is None."""
    lake = Lake(lake_root)
    first = (dt.date.fromisoformat(ds) - dt.timedelta(days=conf.trailing_days)).isoformat()
    daily = lake.query(
        "SELECT ds, domain, COUNT(*) AS n, AVG(CAST(label AS DOUBLE)) AS ctr FROM features "
        f"WHERE ds >= '{first}' AND ds <= '{ds}' GROUP BY ds, domain",
        ["features"],
    ).to_pylist()
    stored = sorted({r["ds"] for r in daily})
    before = [d for d in stored if d < ds]
    volume = {(r["ds"], int(r["domain"])): int(r["n"]) for r in daily}
    ctr = {(r["ds"], int(r["domain"])): float(r["ctr"]) for r in daily}

    scored = sorted(
        r["ds"]
        for r in (
            lake.query(
                f"SELECT DISTINCT ds FROM scores WHERE ds >= '{first}' AND ds <= '{ds}'",
                ["scores"],
            ).to_pylist()
            if lake.exists("scores")
            else []
        )
    )
    hists = _score_histograms(lake, scored)
    previous_scored = [d for d in scored if d < ds]
    wanted = conf.fields if conf.fields is not None else [f.name for f in spec.fields]
    fields = [f for f in spec.fields if f.name in wanted]
    counts = {f.name: _field_counts(lake, f.column, [*before[-1:], ds]) for f in fields}

    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(spec.domains):
        reasons: list[str] = []
        today = volume.get((ds, i), 0) if ds in stored else None  # a domain gone: 0
        v_ratio = _ratio(today, [volume.get((d, i), 0) for d in before])
        c_ratio = _ratio(ctr.get((ds, i)), [ctr[(d, i)] for d in before if (d, i) in ctr])
        for key, r in (("volume", v_ratio), ("ctr", c_ratio)):
            if r is not None and not 1 / conf.ratio_limit <= r <= conf.ratio_limit:
                reasons.append(f"{key} {r:.2f}x the trailing mean")
        s_psi = None
        if previous_scored and (ds, name) in hists and (previous_scored[-1], name) in hists:
            s_psi = round(score_psi(hists[(previous_scored[-1], name)], hists[(ds, name)]), 6)
            if s_psi > conf.psi_threshold:
                reasons.append(f"score PSI {s_psi:.3f} vs {previous_scored[-1]}")
        f_psi: dict[str, float] = {}
        for f in fields:
            if name not in f.domains:
                continue
            cur = counts[f.name].get((ds, i))
            ref = counts[f.name].get((before[-1], i)) if before else None
            if ref and cur:
                f_psi[f.name] = round(value_psi(ref, cur), 6)
                if f_psi[f.name] > conf.psi_threshold:
                    reasons.append(f"{f.name} PSI {f_psi[f.name]:.3f} vs {before[-1]}")
        out[name] = {
            "volume": volume.get((ds, i), 0),
            "volume_ratio": v_ratio,
            "ctr": round(ctr[(ds, i)], 6) if (ds, i) in ctr else None,
            "ctr_ratio": c_ratio,
            "score_psi": s_psi,
            "field_psi": f_psi,
            "flagged": bool(reasons),
            "reasons": reasons,
        }
    if plot is not None:
        _plot(hists, scored[-7:], spec.domains, plot)
    return out


def _plot(
    hists: dict[tuple[str, str], np.ndarray], nights: list[str], domains: Sequence[str], path: Path
) -> None:
    """The score distribution of each domain over the last nights, one line per night."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centers = LOGIT_LO + (np.arange(BINS) + 0.5) * (LOGIT_HI - LOGIT_LO) / BINS
    ticks = [0.001, 0.01, 0.1, 0.5, 0.9, 0.99]
    cols = min(len(domains), 3) or 1
    rows = math.ceil(len(domains) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, domains):
        used = np.zeros(BINS, bool)
        # A logit axis, labelled in probabilities (plain text: no mathtext).
        ax.set_xticks([math.log(t / (1 - t)) for t in ticks], [f"{t:g}" for t in ticks])
        for night in nights:
            h = hists.get((night, name))
            if h is not None and h.sum():
                ax.plot(centers, h / h.sum(), label=night, linewidth=1)
                used |= h > 0
        if used.any():  # zoom on the scores there are
            lo, hi = np.flatnonzero(used)[[0, -1]]
            ax.set_xlim(centers[lo] - 0.5, centers[hi] + 0.5)
        ax.set(title=name, xlabel="score", ylabel="share of rows")
    for ax in list(axes.flat)[len(domains) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def flagged(report: dict[str, dict[str, Any]]) -> list[str]:
    return [f"{d}: {', '.join(r['reasons'])}" for d, r in report.items() if r["flagged"]]

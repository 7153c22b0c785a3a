"""Per-domain transfer report of a trained CDTM: is the shared knowledge used, per domain?

For each domain d and transferable field f of d, over the validation rows of d where f is
present:
- ``attention_dse``: mean of A (the weight on DSE e_f; 1 - A goes to the mapped GSE T_d g_f),
- ``distance``: mean ||e_f - T_d g_f|| (how far the domain's own view is from the shared one),
and per domain the validation AUC with GSE and with GSE switched off (z_f = e_f), and their
difference: a large drop means the domain relies on the shared embeddings.
Written with every CDTM artifact: ``transfer_report.json``, ``.md`` and a heat map PNG.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdtm.data.batch import Batch
from cdtm.model.cdtm import CDTM
from cdtm.spec import FeatureSpec
from cdtm.train.metrics import ctr_metrics


def transfer_report(
    model: CDTM, batches: Iterable[Batch], spec: FeatureSpec, device: torch.device
) -> dict[str, Any] | None:
    """The report's numbers (None when the model has no GSE to report on)."""
    if not model.use_gse:
        return None
    n_d, n_f = len(spec.domains), len(spec.fields)
    a_sum, dist_sum, count = np.zeros((n_d, n_f)), np.zeros((n_d, n_f)), np.zeros((n_d, n_f))
    labels, with_gse, without, domains = [], [], [], []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            b = batch.to(device)
            _, parts = model.combine(b)
            cols = parts["fields"].cpu().numpy()  # the transferable fields' columns
            shared = parts["shared"].squeeze(-1).float()  # [B, C]
            a = parts["a"].mean(-1) * shared
            dist = (parts["e_t"] - parts["m"]).norm(dim=-1) * shared
            onehot = torch.nn.functional.one_hot(b.domain, n_d).float()  # [B, D]
            a_sum[:, cols] += (onehot.T @ a).cpu().numpy()
            dist_sum[:, cols] += (onehot.T @ dist).cpu().numpy()
            count[:, cols] += (onehot.T @ shared).cpu().numpy()
            with_gse.append(torch.sigmoid(model(b)).cpu())
            model.without_gse = True
            try:
                without.append(torch.sigmoid(model(b)).cpu())
            finally:
                model.without_gse = False
            labels.append(b.label.cpu())
            domains.append(b.domain.cpu())
    if not labels:
        return None
    y, d = torch.cat(labels).numpy(), torch.cat(domains).numpy()
    auc_with = ctr_metrics(y, torch.cat(with_gse).numpy(), d, spec.domains)["auc"]
    auc_without = ctr_metrics(y, torch.cat(without).numpy(), d, spec.domains)["auc"]
    out: dict[str, Any] = {"domains": {}, "fields": [f.name for f in spec.fields]}
    for i, name in enumerate(spec.domains):
        fields = {
            f.name: {
                "attention_dse": round(float(a_sum[i, j] / count[i, j]), 4),
                "attention_gse": round(float(1 - a_sum[i, j] / count[i, j]), 4),
                "distance": round(float(dist_sum[i, j] / count[i, j]), 4),
                "rows": int(count[i, j]),
            }
            for j, f in enumerate(spec.fields)
            if count[i, j] > 0
        }
        w, wo = auc_with.get(name), auc_without.get(name)
        out["domains"][name] = {
            "fields": fields,
            "valid_auc": w,
            "valid_auc_without_gse": wo,
            "auc_change_without_gse": round(wo - w, 4)
            if w is not None and wo is not None
            else None,
        }
    return out


def write_transfer_report(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "transfer_report.json").write_text(json.dumps(report, indent=2) + "\n")
    domains, fields = list(report["domains"]), report["fields"]
    lines = [
        "# Transfer report (validation rows)",
        "",
        "Per domain: validation AUC with GSE, without (z = DSE alone), and the change.",
        "",
        "| domain | AUC | AUC without GSE | change |",
        "|---|---|---|---|",
    ]

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    for name, d in report["domains"].items():
        lines.append(
            f"| {name} | {fmt(d['valid_auc'])} | {fmt(d['valid_auc_without_gse'])} | "
            f"{fmt(d['auc_change_without_gse'])} |"
        )
    lines += [
        "",
        "Per domain and transferable field: mean attention on DSE (1 - it goes to T g) and mean",
        "distance ||e - T g||.",
        "",
        "| domain | field | attention on DSE | on mapped GSE | distance | rows |",
        "|---|---|---|---|---|---|",
    ]
    grid = np.full((len(domains), len(fields)), np.nan)
    for i, name in enumerate(domains):
        for j, field in enumerate(fields):
            cell = report["domains"][name]["fields"].get(field)
            if cell:
                grid[i, j] = cell["attention_gse"]
                lines.append(
                    f"| {name} | {field} | {cell['attention_dse']} | {cell['attention_gse']} | "
                    f"{cell['distance']} | {cell['rows']:,} |"
                )
    (out / "transfer_report.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(1.1 * len(fields) + 2, 0.6 * len(domains) + 1.8))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(fields)), fields, rotation=45, ha="right")
    ax.set_yticks(range(len(domains)), domains)
    for i in range(len(domains)):
        for j in range(len(fields)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_title("weight on the shared (mapped GSE) embedding, 1 - A")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "transfer_heatmap.png", dpi=100)
    plt.close(fig)

"""Runnable experiments: the public benchmark and the paper's tasks, in one results format.

``DIR/results.json``: ``{"runs": [{"experiment", "model", "seed", "split_seed", "valid", "test",
"seconds", "best_epoch", "overrides"}], "summary": {experiment: {model: {"test.auc.<domain>":
{"mean", "std", "n"}}}}, "paired": {experiment: {"<a> - <b>": {"<split>.auc.<domain>": {"mean",
"lo", "hi", "n"}}}}}`` plus ``DIR/results.md`` and ``DIR/results.png``.

The protocol (README, "Experiments"): settings are chosen on validation AUC; models are compared
by paired differences, run against run on the same split seed (``etl.split.seed``) and training
seed (same initialisation seed and batch order), with a 95% t-interval over the pairs. "Better"
means the interval excludes 0. Finished runs are kept: re-running continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdtm.config import Config, DatasetConf, load_config, split_fields
from cdtm.train.job import train_model

log = logging.getLogger(__name__)

ALL_MODELS = ("cdtm", "dnn_single", "shared_bottom", "mmoe", "star")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One line of an experiment: a label and the config overrides that make it."""

    experiment: str
    label: str
    overrides: tuple[str, ...]
    # dataset overrides: variants with other data get a lake of their own
    data: tuple[str, ...] = ()
    data_name: str = ""  # that lake's name (default: made from the overrides)


def benchmark_variants(models: Sequence[str], extra: Sequence[str] = ()) -> list[Variant]:
    """Every model with its defaults, plus ``extra`` variants, each ``LABEL=OVERRIDES``: e.g.
    ``cdtm:gate=model.cdtm.gate=domain_field model.cdtm.attention_init=0.5``. The label's part
    before ``:`` is the model."""
    out = [Variant("benchmark", m, (f"model.name={m}",)) for m in models]
    for spec in extra:
        label, eq, rest = spec.partition("=")
        model = label.split(":", 1)[0]
        if not eq or ":" not in label or model not in ALL_MODELS or not rest.split():
            raise ValueError(
                f"--variant {spec!r}: expected MODEL:NAME=key=value [key=value ...] with MODEL "
                f"one of {', '.join(ALL_MODELS)}"
            )
        out.append(Variant("benchmark", label, (f"model.name={model}", *rest.split())))
    return out


def sparse_target(target: str, fraction: float) -> tuple[str, str]:
    """Keep ``fraction`` of the target's training rows; early stopping watches the target."""
    return (
        f"train.domain_fraction={{'{target}': {fraction}}}",
        f"train.early_stop_domain='{target}'",
    )


def paper_variants(
    domains: Sequence[str], target: str, fraction: float, models: Sequence[str]
) -> list[Variant]:
    """Task 1 (target + one source), Task 2 (target + all sources), Task 3 (ablations).

    The target's training rows are down-sampled to ``fraction``; early stopping watches the target.
    """
    sources = [d for d in domains if d != target]
    common = sparse_target(target, fraction)
    out: list[Variant] = []
    if "dnn_single" in models:
        out.append(
            Variant(
                "task1",
                "dnn_single:target-only",
                (*common, "model.name=dnn_single", f"train.train_domains=['{target}']"),
            )
        )
    for s in sources:
        for m in [m for m in models if m != "dnn_single"]:
            out.append(
                Variant(
                    "task1",
                    f"{m}:{target}+{s}",
                    (*common, f"model.name={m}", f"train.train_domains=['{target}', '{s}']"),
                )
            )
    for m in [m for m in models if m != "dnn_single"]:
        out.append(Variant("task2", f"{m}:all-sources", (*common, f"model.name={m}")))
    if "cdtm" in models:
        ablations = {
            "cdtm:no-attention": "model.cdtm.attention=none model.cdtm.attention_init=0.5",
            "cdtm:no-transfer": "model.cdtm.transfer=identity",
            "cdtm:no-gse": "model.cdtm.gse=false",
            "cdtm:no-align": "model.cdtm.align_weight=0",
        }
        for label, ov in ablations.items():
            out.append(Variant("task3", label, (*common, "model.name=cdtm", *ov.split())))
    return out


def beyond_variants(sources: int = 6) -> list[Variant]:
    """The questions the paper leaves open, on the synthetic generator (issue #8, items 1-4).

    - ``sources``: target + 1, 2, ... ``sources`` source domains (the target is the last domain);
    - ``transferable``: no, some (user_id, item_id) or all transferable fields in GSE;
    - ``disjoint``: the target shares no field with the sources;
    - ``negative``: one source clicks by unrelated factors, against the same data without it.
    """
    names = [f"d{k}" for k in range(sources + 1)]
    target = names[-1]
    stop = (f"train.early_stop_domain='{target}'",)
    many = (f"dataset.source.synthetic.domains={sources + 1}",)
    out = [
        Variant(
            "sources",
            "dnn_single:0-sources",
            (*stop, "model.name=dnn_single", f"train.train_domains=['{target}']"),
            many,
        )
    ]
    for k in range(1, sources + 1):
        domains = ", ".join(f"'{d}'" for d in [target, *names[:k]])
        for m in ("cdtm", "shared_bottom"):
            out.append(
                Variant(
                    "sources",
                    f"{m}:{k}-sources",
                    (*stop, f"model.name={m}", f"train.train_domains=[{domains}]"),
                    many,
                )
            )
    t4 = ("train.early_stop_domain='d3'",)
    for label, fields in (("none", "[]"), ("some", "['user_id', 'item_id']"), ("all", "null")):
        out.append(
            Variant(
                "transferable",
                f"cdtm:{label}",
                (*t4, "model.name=cdtm", f"model.cdtm.transferable={fields}"),
            )
        )
    for exp, data in (
        ("disjoint", ("dataset.source.synthetic.shared_fields=false",)),
        ("negative", ("dataset.source.synthetic.unrelated_domains=1",)),
        ("negative-reference", ()),
    ):
        for m in ("cdtm", "shared_bottom", "dnn_single"):
            out.append(Variant(exp, f"{m}:all-sources", (*t4, f"model.name={m}"), data))
    return out


def domain_names(dataset: DatasetConf) -> list[str]:
    if dataset.domain is None:
        raise ValueError(
            f"dataset {dataset.name}: no domain spec, so no domains to transfer between"
        )
    return dataset.domain.names


def disjoint_fields(dataset: DatasetConf, target: str) -> str:
    """A ``dataset.fields=...`` override under which ``target`` and the other domains share no
    field: each field becomes a target copy and a sources copy that read the same column."""
    fields = split_fields(dataset.fields, domain_names(dataset), target)
    specs = [{k: v for k, v in dataclasses.asdict(f).items() if v is not None} for f in fields]
    return "dataset.fields=" + json.dumps(specs)


def beyond_real_variants(
    dataset: DatasetConf, fraction: float, models: Sequence[str] = ("cdtm", "shared_bottom")
) -> list[Variant]:
    """Issue #8 on a real data set whose domains all share their fields. The sparse target
    keeps ``fraction`` of its training rows; early stopping watches it.

    - ``negative``: target (the first domain) + one real source, against the same plus the last
      domain as a source whose training labels are shuffled (no signal) or inverted (opposite
      tastes: a dissimilar source);
    - ``transferable``: CDTM with no, some (the user and item id fields) or all transferable
      fields in GSE;
    - ``disjoint``: the target and the sources share no field (each field split in two);
    - ``sources-<t>``: each domain in turn is the target: alone (single-domain DNN), with each
      one source, with all sources (CDTM).
    """
    domains = domain_names(dataset)
    sources: list[Variant] = []
    for t in domains:
        common = sparse_target(t, fraction)
        exp = f"sources-{t}"
        only = (*common, "model.name=dnn_single", f"train.train_domains=['{t}']")
        sources.append(Variant(exp, "dnn_single:target-only", only))
        for s in [d for d in domains if d != t]:
            pair = f"train.train_domains=['{t}', '{s}']"
            sources.append(Variant(exp, f"cdtm:{t}+{s}", (*common, "model.name=cdtm", pair)))
        sources.append(Variant(exp, "cdtm:all-sources", (*common, "model.name=cdtm")))
    target, noise = domains[0], domains[-1]
    real = [d for d in domains if d not in (target, noise)]
    common = sparse_target(target, fraction)
    good = "+".join([target, *real])
    with_good = "train.train_domains=[" + ", ".join(f"'{d}'" for d in [target, *real]) + "]"
    out = [
        Variant(
            "negative",
            "dnn_single:target-only",
            (*common, "model.name=dnn_single", f"train.train_domains=['{target}']"),
        )
    ]
    for m in models:
        out.append(Variant("negative", f"{m}:{good}", (*common, f"model.name={m}", with_good)))
        for kind, key in (("shuffled", "shuffle_labels"), ("flipped", "flip_labels")):
            out.append(
                Variant(
                    "negative",
                    f"{m}:{good}+{kind}-{noise}",
                    (*common, f"model.name={m}", f"train.{key}=['{noise}']"),
                )
            )
    keys = (dataset.keys.user, dataset.keys.item) if dataset.keys else ()
    ids = [f.name for f in dataset.fields if f.transferable and f.source_column in keys]
    for label, fields in (("none", "[]"), ("some", repr(ids)), ("all", "null")):
        out.append(
            Variant(
                "transferable",
                f"cdtm:{label}",
                (*common, "model.name=cdtm", f"model.cdtm.transferable={fields}"),
            )
        )
    split = (disjoint_fields(dataset, target),)
    for m in ("cdtm", "shared_bottom", "dnn_single"):
        out.append(
            Variant("disjoint", f"{m}:all-sources", (*common, f"model.name={m}"), split, "disjoint")
        )
    return out + sources


def run_variants(
    base_configs: Sequence[str | Path],
    base_overrides: Sequence[str],
    variants: Sequence[Variant],
    seeds: Sequence[int],
    out: Path,
    split_seed: int = 0,
) -> dict[str, Any]:
    """Train every (variant, seed) not yet in ``out/results.json`` for this split seed (the
    lake in ``base_overrides`` was split with it); write results after each run."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": []}
    done = {
        (r["experiment"], r["model"], r["seed"], r.get("split_seed", 0)) for r in results["runs"]
    }
    todo = [
        (v, s)
        for v in variants
        for s in seeds
        if (v.experiment, v.label, s, split_seed) not in done
    ]
    log.info("%d runs to do (%d already in %s)", len(todo), len(done), path)
    for i, (v, seed) in enumerate(todo, 1):
        # A plain folder name (train.model_version): "synthetic:task1", "cdtm:0+1" -> "-", "_".
        run_tag = f"{v.experiment}-{v.label.replace('+', '_')}-s{seed}"
        if split_seed:
            run_tag += f"-split{split_seed}"
        tag = re.sub(r"[^A-Za-z0-9._-]", "-", run_tag)
        cfg: Config = load_config(
            base_configs,
            [
                *base_overrides,
                *v.overrides,
                f"train.seed={seed}",
                f"train.model_version={tag}",
                f"artifacts.root={out / 'artifacts'}",
            ],
        )
        log.info(
            "[%d/%d] %s %s seed %d split %d",
            i,
            len(todo),
            v.experiment,
            v.label,
            seed,
            split_seed,
        )
        t0 = time.time()
        res = train_model(cfg)
        results["runs"].append(
            {
                "experiment": v.experiment,
                "model": v.label,
                "seed": seed,
                "split_seed": split_seed,
                "valid": res.fit.valid,
                "test": res.fit.test,
                "seconds": round(time.time() - t0, 1),
                "best_epoch": res.fit.best_epoch,
                "epochs_run": res.fit.epochs_run,
                "overrides": list(v.overrides),
            }
        )
        _save(results, out)
    _save(results, out)
    return results


def _save(results: dict[str, Any], out: Path) -> None:
    """results.json (replaced atomically: a kill mid-write keeps the last complete file)."""
    results["summary"] = summarize(results["runs"])
    results["paired"] = paired(results["runs"])
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    write_report(results, out)


def _is_cdtm(label: str) -> bool:
    return label.split(":", 1)[0] == "cdtm"


def paired(
    runs: Sequence[dict[str, Any]], level: float = 0.95
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Paired differences ``a - b`` of every AUC, per experiment: each CDTM label against each
    other model's label, and each CDTM variant against plain ``cdtm``. A pair is two runs with
    the same training seed and split seed; the interval is the t-interval of the mean."""
    from scipy import stats as st

    by: dict[str, dict[str, dict[tuple[int, int], dict[str, Any]]]] = {}
    for r in runs:
        key = (int(r["seed"]), int(r.get("split_seed", 0)))
        by.setdefault(r["experiment"], {}).setdefault(r["model"], {})[key] = r
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for exp, models in by.items():
        labels = list(models)
        pairs = [(a, b) for a in labels for b in labels if _is_cdtm(a) and not _is_cdtm(b)]
        if "cdtm" in models:
            pairs += [(a, "cdtm") for a in labels if _is_cdtm(a) and a != "cdtm"]
        for a, b in pairs:
            common = sorted(set(models[a]) & set(models[b]))
            if not common:
                continue
            stats: dict[str, dict[str, float]] = {}
            for split in ("valid", "test"):
                for name in models[a][common[0]][split]["auc"]:
                    diffs = [
                        models[a][k][split]["auc"][name] - models[b][k][split]["auc"][name]
                        for k in common
                        if models[a][k][split]["auc"].get(name) is not None
                        and models[b][k][split]["auc"].get(name) is not None
                    ]
                    if not diffs:
                        continue
                    mean = statistics.fmean(diffs)
                    half = (
                        float(st.t.ppf(0.5 + level / 2, len(diffs) - 1))
                        * statistics.stdev(diffs)
                        / len(diffs) ** 0.5
                        if len(diffs) > 1
                        else float("nan")
                    )
                    stats[f"{split}.auc.{name}"] = {
                        "mean": mean,
                        "lo": mean - half,
                        "hi": mean + half,
                        "n": float(len(diffs)),
                    }
            out.setdefault(exp, {})[f"{a} - {b}"] = stats
    return out


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["experiment"], r["model"]), []).append(r)
    summary: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for (exp, model), rs in groups.items():
        stats: dict[str, dict[str, float]] = {}
        for split in ("valid", "test"):
            for kind in ("auc", "logloss"):
                for name in rs[0][split][kind]:
                    values = [r[split][kind][name] for r in rs if r[split][kind][name] is not None]
                    if values:
                        stats[f"{split}.{kind}.{name}"] = {
                            "mean": statistics.fmean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                            "n": float(len(values)),
                        }
        stats["seconds"] = {
            "mean": statistics.fmean(r["seconds"] for r in rs),
            "std": 0.0,
            "n": float(len(rs)),
        }
        summary.setdefault(exp, {})[model] = stats
    return summary


def write_report(results: dict[str, Any], out: Path) -> None:
    summary = results.get("summary") or summarize(results["runs"])
    diffs = results.get("paired") or paired(results["runs"])
    lines = [
        "# Results",
        "",
        "AUC, mean +- std over runs (n = training seeds x split seeds). Choose settings on the",
        "valid table; the test table is read once, at the end. Paired differences: mean and 95%",
        "t-interval of a - b over runs with the same seeds; * where the interval excludes 0.",
        "",
    ]
    for exp, models in summary.items():
        names = _columns(models)
        lines += [f"## {exp}", ""]
        for split in ("valid", "test"):
            lines += [
                f"{split} AUC",
                "",
                "| model | n | " + " | ".join(names) + " | minutes/run |",
                "|---|---|" + "---|" * len(names) + "---|",
            ]
            for model, st in models.items():
                cells = []
                for n in names:
                    s = st.get(f"{split}.auc.{n}")
                    cells.append(f"{s['mean']:.4f} +- {s['std']:.4f}" if s else "-")
                n_runs = int(st["seconds"]["n"])
                lines.append(
                    f"| {model} | {n_runs} | "
                    + " | ".join(cells)
                    + f" | {st['seconds']['mean'] / 60:.1f} |"
                )
            lines.append("")
        for split in ("valid", "test"):
            rows = diffs.get(exp, {})
            if not rows:
                continue
            lines += [
                f"paired differences, {split} AUC",
                "",
                "| a - b | n | " + " | ".join(names) + " |",
                "|---|---|" + "---|" * len(names),
            ]
            for pair, st in rows.items():
                cells = [_interval(st.get(f"{split}.auc.{n}")) for n in names]
                n_pairs = int(max((v["n"] for v in st.values()), default=0))
                lines.append(f"| {pair} | {n_pairs} | " + " | ".join(cells) + " |")
            lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    _chart(summary, out / "results.png")


def _interval(s: dict[str, float] | None) -> str:
    if not s:
        return "-"
    if s["n"] < 2:
        return f"{s['mean']:+.4f}"
    star = "*" if s["lo"] > 0 or s["hi"] < 0 else ""
    return f"{s['mean']:+.4f} [{s['lo']:+.4f}, {s['hi']:+.4f}]{star}"


def _columns(models: dict[str, Any]) -> list[str]:
    """Metric columns: pooled first, then the domains in order."""
    names = {k.split(".", 2)[2] for st in models.values() for k in st if k.startswith("test.auc.")}
    return ["pooled", *sorted(names - {"pooled"})] if "pooled" in names else sorted(names)


def _chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(summary.items())
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for ax, (exp, models) in zip(axes[:, 0], panels):
        names = _columns(models)
        width = 0.8 / max(len(models), 1)
        lows = []
        for i, (model, st) in enumerate(models.items()):
            means = [st.get(f"test.auc.{n}", {}).get("mean", 0.0) for n in names]
            stds = [st.get(f"test.auc.{n}", {}).get("std", 0.0) for n in names]
            xs = [j + i * width for j in range(len(names))]
            ax.bar(xs, means, width, yerr=stds, label=model, capsize=2)
            lows += [m for m in means if m > 0]
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
        if lows:
            ax.set_ylim(min(lows) - 0.02, max(lows) + 0.01)
        ax.set(title=f"{exp}: test AUC (mean +- std over seeds)")
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

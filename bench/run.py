"""Run every benchmark and write ``bench/results/latest.json``, ``summary.md`` and PNG charts.

    python -m bench.run                 # the full set (make bench), about 8 min on 2 cores
    python -m bench.run --quick         # tiny sizes, one repeat: checks the code, not the speed
    python -m bench.run --only etl,reader --rows 1000000,4000000 --repeats 3

Every target is a ratio against a baseline measured in the same run (see README, Performance).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import REPO
from bench.etl import bench_etl, make_input
from bench.horovod import bench_horovod
from bench.reader import bench_reader
from bench.score import bench_score
from bench.train import bench_train, memory_profile
from cdtm.config import load_config
from cdtm.spark import build_session
from feature_etl.etl import run_etl

STAGES = ("etl", "reader", "train", "memory", "horovod", "score")

# name: (key in latest.json, how to read it, test, threshold); None = reported, no target.
TARGETS: dict[str, tuple[str, str, str, float] | None] = {
    "etl.ratio_vs_duckdb": None,
    "etl.ratio_vs_duckdb_spark": ("rows/s Spark ETL / DuckDB", "issue #29", ">=", 0.35),
    "etl.ratio_vs_duckdb_delta_rs": None,
    "etl.growth_1m_to_4m": ("time(4x rows) / time(1x rows)", "linear", "<=", 4.4),
    "reader.ratio_vs_pyarrow": None,
    "train.feed_ratio": ("samples/s Petastorm-fed / in-memory", "feed costs < 20%", ">=", 0.8),
    "train.peak_rss_mb": None,
    "train.subnormal_flush_speedup": None,
    "train.cdtm_vs_shared_bottom": (
        "samples/s CDTM / pooled DNN (shared-bottom)",
        "issue #29",
        ">=",
        0.8,
    ),
    "train.oversubscription_penalty": (
        "samples/s 2 processes, threads=auto / torch's default",
        "no spinning",
        ">=",
        1.0,
    ),
    "memory.rss_growth": None,
    "memory.rss_growth_without_model_state": (
        "training RSS less model state, 4x rows / 1x rows",
        "flat (streams)",
        "<=",
        1.2,
    ),
    "horovod.speedup_2_vs_1": None,
    "score.ratio_vs_inprocess": ("rows/s job / in-process torch", "issue #29", ">=", 0.75),
}


# Targets missed on the first full run, what the profiles showed and what changed (medians of
# 3 runs on this 2-core machine). Kept in every summary so that the history stays with it.
PROFILE_NOTES = [
    "reader.ratio_vs_pyarrow 0.105 -> 0.62: pyinstrument showed 2.4 of 2.8 s in `sleep` inside "
    "Petastorm's dummy pool (it polls its queue every 0.1 s); one read-ahead thread keeps the "
    "seeded order and is 8x faster.",
    "train.feed_ratio 0.74 -> 0.83 (target 0.8): the same reader fix.",
    "train.cdtm_vs_shared_bottom 0.30 -> 0.57: the torch profiler showed a third of a step in "
    "index_put (the backward of per-row gathers T[domain], V1[domain]) and a fifth in unfused "
    "Adam over the dense embedding gradients; now one-hot matmuls and fused Adam.",
    "score.ratio_vs_inprocess 0.41 -> 0.51 (target 0.5): scoring maps Arrow batches (no pandas "
    "round trip of the key strings) and writes them in the same Python worker (one trip through "
    "the JVM instead of two).",
    "memory: ru_maxrss of a forked child reported the parent's peak (identical 2.3 GB at every "
    "size); the child now reads VmHWM. Model state (5 x parameters, 6 with the weight average) "
    "grows with the synthetic vocabularies, so the streaming check excludes it.",
]


def get(results: dict[str, Any], dotted: str) -> Any:
    node: Any = results
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def verdict(value: float | None, test: str, threshold: float) -> str:
    if value is None:
        return "not run"
    ok = value <= threshold if test == "<=" else value >= threshold
    return "met" if ok else "MISSED"


def write_summary(results: dict[str, Any], out: Path) -> None:
    meta = results["meta"]
    ran = meta.get("stages", STAGES)  # a partial re-run's seconds cover its own stages only
    scope = "" if set(ran) == set(STAGES) else f" of {', '.join(ran)}"
    lines = [
        f"# Benchmarks ({meta['date']}, {meta['cores']} cores, "
        f"{'quick' if meta['quick'] else 'full'} run{scope}, {meta['seconds']:.0f} s)",
        "",
        "Ratios are throughput ours / baseline (higher is better) unless named growth; medians of "
        f"{meta['repeats']} runs, baseline measured in the same run.",
        "",
        "| key | value | target | verdict |",
        "|---|---|---|---|",
    ]
    for key, target in TARGETS.items():
        value = get(results, key)
        if target is None:
            lines.append(f"| `{key}` | {value} | (reported) | |")
        else:
            meaning, _, test, threshold = target
            lines.append(
                f"| `{key}` | {value} | {test} {threshold} ({meaning}) | {verdict(value, test, threshold)} |"
            )
    etl = results.get("etl")
    if etl:
        lines += [
            "",
            "## ETL",
            "",
            "| rows | Spark ETL s | rows/s | DuckDB s | rows/s | driver peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for r in etl["sizes"].values():
            lines.append(
                f"| {r['rows']:,} | {r['spark_seconds']} | {r['spark_rows_per_s']:,} | "
                f"{r['duckdb_seconds']} | {r['duckdb_rows_per_s']:,} | {r['driver_peak_rss_mb']} |"
            )
    for stage in ("reader", "train", "memory", "horovod", "score"):
        if stage in results:
            flat = {k: v for k, v in results[stage].items() if not isinstance(v, (dict, list))}
            lines += ["", f"## {stage}", "", "| measure | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in flat.items()]
            if stage == "memory":
                for size, r in results[stage].items():
                    if isinstance(r, dict):
                        lines.append(
                            f"| training process at {int(size):,} rows | {r['peak_rss_mb']} MB, {r['samples_per_s']:,} samples/s |"
                        )
    if results.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in results["notes"]]]
    lines += ["", "## Profiled and fixed (before -> after)", "", *[f"- {n}" for n in PROFILE_NOTES]]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def write_charts(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in TARGETS if isinstance(get(results, k), (int, float)) and "rss_mb" not in k]
    fig, ax = plt.subplots(figsize=(8, 4))
    values = [float(get(results, k)) for k in keys]
    bars = ax.barh(keys, values, color="#4c72b0")
    for key, bar in zip(keys, bars):
        target = TARGETS[key]
        if target is not None:
            y = bar.get_y()
            ax.plot([target[3]] * 2, [y, y + bar.get_height()], color="#c44e52", lw=2)
    ax.set_xlabel("ratio (red: target)")
    ax.set_title("Benchmarks: ratios against same-run baselines")
    fig.tight_layout()
    fig.savefig(out / "ratios.png", dpi=110)
    plt.close(fig)

    etl = results.get("etl")
    if etl:
        sizes = list(etl["sizes"].values())
        fig, ax = plt.subplots(figsize=(6, 4))
        rows = [r["rows"] for r in sizes]
        ax.plot(
            rows, [r["spark_seconds"] for r in sizes], "o-", label="feature ETL (Spark + Delta)"
        )
        ax.plot(rows, [r["duckdb_seconds"] for r in sizes], "s-", label="DuckDB, one SQL statement")
        ax.set_xlabel("input rows")
        ax.set_ylabel("seconds (median)")
        ax.legend()
        ax.set_title("ETL time as rows grow")
        fig.tight_layout()
        fig.savefig(out / "etl_scaling.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (a smoke run)")
    p.add_argument("--only", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    p.add_argument("--rows", default=None, help="ETL sizes, smallest first (default 1M,4M)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="training steps per timed epoch")
    p.add_argument(
        "--out", type=Path, default=None, help="default bench/results (quick: WORK/quick-results)"
    )
    p.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    p.add_argument("--config", action="append", default=None)
    args = p.parse_args(argv)
    stages = [s for s in args.only.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stages {unknown} (known: {', '.join(STAGES)})")
    quick = args.quick
    sizes = [
        int(r) for r in (args.rows or ("20000,80000" if quick else "1000000,4000000")).split(",")
    ]
    repeats = args.repeats or (1 if quick else 3)
    steps = args.steps or (5 if quick else 100)
    configs = args.config or [str(REPO / "conf" / "local.yaml")]

    # Two local cores: training and Spark tasks compete for them as they would on one executor.
    cfg = load_config(configs, ["tracking.enabled=false", "train.plots=false"])
    spark = build_session(cfg.spark)
    out: Path = args.out or (args.work / "quick-results" if quick else REPO / "bench" / "results")
    args.work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "quick": quick,
            "repeats": repeats,
            "sizes": sizes,
            "stages": stages,
            "train_steps": steps,
        },
        "notes": [],
    }
    # When each stage's figures were measured: a partial re-run keeps the others' figures and
    # their dates, and the notes say which come from which run.
    dates = results["meta"]["stage_dates"] = {s: results["meta"]["date"] for s in stages}
    previous = out / "latest.json"
    if set(stages) != set(STAGES) and previous.exists():
        old = json.loads(previous.read_text())
        kept = [s for s in STAGES if s not in stages and s in old]
        results.update({s: old[s] for s in kept})
        old_dates = old["meta"].get("stage_dates", {})
        dates.update({s: old_dates.get(s, old["meta"]["date"]) for s in kept})
        for date in sorted({dates[s] for s in kept}):
            same = [s for s in kept if dates[s] == date]
            results["notes"].append(f"{', '.join(same)}: from the run of {date}")
    try:
        lakes = {rows: str(args.work / f"lake-{rows}") for rows in sizes}
        if "etl" in stages:
            results["etl"] = bench_etl(spark, cfg, sizes, repeats, args.work)
        else:  # later stages still need the lakes: build missing ones once, untimed
            for rows in sizes:
                if not Path(lakes[rows], "features").exists():
                    _, dataset = make_input(spark, rows, args.work)
                    lake = dataclasses.replace(cfg.lake, root=lakes[rows])
                    run_etl(spark, dataclasses.replace(cfg, dataset=dataset, lake=lake))
        small = lakes[sizes[0]]
        if "reader" in stages:
            results["reader"] = bench_reader(small, repeats)
        if "train" in stages:
            results["train"] = bench_train(cfg, small, repeats, steps)
        if "memory" in stages:
            results["memory"] = memory_profile(lakes, configs)
            results.setdefault("train", {})["peak_rss_mb"] = results["memory"]["peak_rss_mb"]
        if "horovod" in stages:
            results["horovod"] = bench_horovod(spark, cfg, small, args.work, repeats, steps)
        if "score" in stages:
            results["score"] = bench_score(cfg, spark, small, args.work, repeats)
    except Exception as e:
        results["notes"].append(f"stopped by an error: {type(e).__name__}: {e}")
        raise
    finally:
        spark.stop()
        # Whatever finished is kept, also when a later stage failed.
        results["meta"]["seconds"] = round(time.time() - start, 1)
        (out / "latest.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        write_summary(results, out)
        write_charts(results, out)
    print((out / "summary.md").read_text())
    if not quick:
        shutil.rmtree(args.work / "hvd-artifacts", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

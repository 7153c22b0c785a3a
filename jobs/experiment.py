"""Experiments: the MovieLens-1M multi-domain benchmark and the paper's tasks.

    python jobs/experiment.py benchmark --out out/benchmark [--models cdtm,shared_bottom] [--seeds 0,1,2]
    python jobs/experiment.py paper --out out/paper [--target 0 --fraction 0.1] [--datasets movielens-1m,synthetic]
    python jobs/experiment.py beyond --out out/beyond   # more sources, transferable share,
                                                         # disjoint fields, negative transfer
    python jobs/experiment.py beyond --datasets movielens-1m --out out/beyond-ml1m  # the same
        # questions on real data: each domain as the target, a source with shuffled or
        # inverted labels, transferable share, fields split between target and sources

Writes DIR/results.json, DIR/results.md and DIR/results.png; re-running continues where it stopped.
--only task1,negative runs only those experiments.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from cdtm.cli import DEFAULT_CONFIGS, parser, run_job, setup_logging
from cdtm.config import ConfigError, load_config
from cdtm.experiments import (
    ALL_MODELS,
    benchmark_variants,
    beyond_real_variants,
    beyond_variants,
    domain_names,
    paper_variants,
    run_variants,
)
from cdtm.lake import Lake
from cdtm.spark import build_session
from feature_etl.etl import dataset_of, run_etl

# The benchmark trains with the defaults, weight averaging included. The paper's tasks and the
# open questions were measured without it (README), and keep that recipe. --set still wins.
PINNED = {"paper": ("train.ema=0",), "beyond": ("train.ema=0",)}

DATASETS = {
    "movielens-1m": "conf/datasets/movielens-1m.yaml",
    "synthetic": "conf/datasets/synthetic.yaml",
    "synthetic-strong": "conf/datasets/synthetic-strong.yaml",
}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("experiment", choices=["benchmark", "paper", "beyond"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--models", default=",".join(ALL_MODELS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--datasets",
        default=None,
        help="comma list (default: benchmark movielens-1m; paper movielens-1m,synthetic)",
    )
    p.add_argument(
        "--target",
        default=None,
        help="paper: the sparse target domain (default: 0 / the synthetic last domain)",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=0.1,
        help="paper, beyond (real data): share of the sparse target's training rows kept",
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma list of experiments to run (e.g. negative,disjoint; default: all)",
    )
    args = p.parse_args(argv)
    setup_logging()
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(ALL_MODELS))
    if unknown:
        p.error(f"unknown models {unknown} (known: {', '.join(ALL_MODELS)})")
    seeds = [int(s) for s in args.seeds.split(",")]
    default = {
        "benchmark": "movielens-1m",
        "paper": "movielens-1m,synthetic",
        "beyond": "synthetic",
    }[args.experiment]
    base = list(args.config or DEFAULT_CONFIGS)
    args.overrides = [*PINNED.get(args.experiment, ()), *args.overrides]

    spark = None
    for name in (args.datasets or default).split(","):
        configs = [*base, DATASETS[name]]
        try:
            cfg = load_config(configs, args.overrides)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            return 2
        if args.experiment == "benchmark":
            variants = benchmark_variants(models)
        elif args.experiment == "beyond":
            found = (
                beyond_variants()
                if name.startswith("synthetic")
                else beyond_real_variants(dataset_of(cfg), args.fraction)
            )
            variants = [
                dataclasses.replace(v, experiment=f"{name}:{v.experiment}")
                for v in found
                if v.label.split(":")[0] in models
            ]
        else:
            domains = domain_names(dataset_of(cfg))
            target = (
                args.target
                if args.target is not None and args.target in domains
                else (domains[0] if name == "movielens-1m" else domains[-1])
            )
            fraction = args.fraction if name == "movielens-1m" else 1.0
            variants = [
                dataclasses.replace(v, experiment=f"{name}:{v.experiment}")
                for v in paper_variants(domains, target, fraction, models)
            ]
        if args.only:
            keep = set(args.only.split(","))
            known = {v.experiment.split(":", 1)[-1] for v in variants}
            if keep - known:
                p.error(
                    f"--only: no experiment {sorted(keep - known)} for {name} "
                    f"(known: {sorted(known)})"
                )
            variants = [v for v in variants if v.experiment.split(":", 1)[-1] in keep]
        # One lake per distinct data setting (most variants share the data set's own).
        data_names = {v.data: v.data_name for v in variants}
        for data, data_name in data_names.items():
            tag = data_name or "-".join(o.rsplit(".", 1)[-1].replace("=", "_") for o in data)
            lake = args.out / (f"lake-{name}-{tag}" if tag else f"lake-{name}")
            overrides = [*args.overrides, *data, f"lake.root={lake}"]
            if not Lake(str(lake)).exists("features"):
                spark = spark or build_session(cfg.spark)
                etl_cfg = load_config(configs, overrides)
                print(run_etl(spark, etl_cfg).summary(), file=sys.stderr)
            group = [v for v in variants if v.data == data]
            run_variants(configs, overrides, group, seeds, args.out)
    print((args.out / "results.md").read_text())
    return 0


def run() -> None:
    """The console script ``cdtm-experiment``."""
    run_job("experiment", main)


if __name__ == "__main__":
    run()

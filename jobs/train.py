"""Train a model (CDTM or a baseline) from the lake's feature tables; write its artifact.

    python jobs/train.py --config conf/local.yaml --config conf/datasets/movielens-1m.yaml \
        --set model.name=cdtm [--set train.backend=horovod-spark --set train.num_proc=2] [--resume]
        [--challenge]

Prints metrics.json of the new artifact on stdout. ``--challenge``: the new model is a
challenger, promoted to champion only if it is at least as good on its validation rows
(cdtm.champion); the decision is printed under ``promotion``.
"""

from __future__ import annotations

import json
import sys

from cdtm.cli import load, parser, run_job, setup_logging
from cdtm.spark import build_session
from cdtm.train.launch import launch


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--resume", action="store_true", help="continue the same run from its last checkpoint"
    )
    p.add_argument(
        "--challenge",
        action="store_true",
        help="promote the new model to champion only if it is as good on the same rows",
    )
    args = p.parse_args(argv)
    setup_logging()
    cfg = load(args)
    spark = (
        build_session(cfg.spark)
        if cfg.train.backend in ("horovod-spark", "torch-distributor")
        else None
    )
    try:
        result = launch(spark, cfg, resume=args.resume)
        promotion = None
        if args.challenge:
            from cdtm.champion import challenge

            promotion = challenge(cfg, result.model_version).to_dict()
    except (FileNotFoundError, RuntimeError) as e:
        print(f"train failed: {e}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "model_version": result.model_version,
                "artifact": str(result.artifact),
                "processes": result.processes,
                "best_epoch": result.best_epoch,
                **result.metrics,
                **({"promotion": promotion} if promotion else {}),
            },
            indent=2,
        )
    )
    return 0


def run() -> None:
    """The console script ``cdtm-train``."""
    run_job("train", main)


if __name__ == "__main__":
    run()

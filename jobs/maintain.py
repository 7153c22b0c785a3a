"""Lake maintenance: vacuum, compact, purge deletion vectors, register tables by name.

    python jobs/maintain.py vacuum --config conf/local.yaml [--retention-hours 168] [--dry-run]
        [--tables features,scores] [--force]
    python jobs/maintain.py optimize [--tables features] [--ds 2024-01-01]
    python jobs/maintain.py purge --tables features
    python jobs/maintain.py register
    python jobs/maintain.py promote --model <model_version> [--reason "..."]
    python jobs/maintain.py rollback

vacuum removes orphaned files of killed jobs and files no recent version needs; a retention
below lake.min_vacuum_retention_hours (default 168) is refused unless --force: stop every job
on the lake first. purge rewrites files that carry deletion vectors (after someone ran DELETE
with them on), which the training reader's file list cannot see. register names every table
in the metastore. promote makes a model version (a folder of artifacts.root) the champion that
the nightly pipeline and scoring.model=champion score with; rollback restores the champion it
replaced. Prints what it did (JSON).
"""

from __future__ import annotations

import json
import sys

from cdtm.cli import load, parser, run_job, setup_logging
from cdtm.config import Config
from cdtm.lake import LakeError
from cdtm.maintenance import (
    MaintenanceError,
    optimize_lake,
    purge_lake,
    register_lake,
    vacuum_lake,
)
from cdtm.train.artifacts import ArtifactError


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "command", choices=["vacuum", "optimize", "purge", "register", "promote", "rollback"]
    )
    p.add_argument("--retention-hours", type=float, default=None)
    p.add_argument("--tables", default=None, help="comma list (default: every table)")
    p.add_argument("--dry-run", action="store_true", help="list the files, delete nothing")
    p.add_argument("--force", action="store_true", help="allow a retention below the minimum")
    p.add_argument("--ds", default=None, help="optimize: only this day")
    p.add_argument("--model", default=None, help="promote: the model version")
    p.add_argument("--reason", default="promoted by hand", help="promote: recorded with it")
    args = p.parse_args(argv)
    setup_logging()
    cfg = load(args)
    if args.command in ("promote", "rollback"):
        return _champion(cfg, args.command, args.model, args.reason)
    tables = args.tables.split(",") if args.tables else None
    spark = None
    if cfg.lake.engine == "spark" or args.command != "vacuum":
        from cdtm.spark import build_session

        spark = build_session(cfg.spark)
    try:
        out: object
        if args.command == "vacuum":
            out = vacuum_lake(
                cfg,
                args.retention_hours,
                tables=tables,
                force=args.force,
                dry_run=args.dry_run,
                spark=spark,
            )
        elif args.command == "optimize":
            assert spark is not None
            out = optimize_lake(spark, cfg, tables, args.ds)
        elif args.command == "purge":
            assert spark is not None
            if not tables:
                raise MaintenanceError("purge: name the tables (--tables features)")
            out = purge_lake(spark, cfg, tables)
        else:
            assert spark is not None
            out = register_lake(spark, cfg)
    except (MaintenanceError, LakeError) as e:
        print(f"maintain failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, sort_keys=True, default=str))
    return 0


def _champion(cfg: Config, command: str, model: str | None, reason: str) -> int:
    from cdtm.champion import ChampionError, promote, rollback

    try:
        if command == "promote":
            if not model:
                raise ChampionError("promote: name the model version (--model)")
            promote(cfg, model, reason)
            out = {"champion": model, "reason": reason}
        else:
            out = {"champion": rollback(cfg), "reason": "rollback"}
    except (ChampionError, ArtifactError) as e:
        print(f"maintain failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def run() -> None:
    """The console script ``cdtm-maintain``."""
    run_job("maintain", main)


if __name__ == "__main__":
    run()

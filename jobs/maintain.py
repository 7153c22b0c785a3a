"""Lake maintenance: remove orphaned files of killed jobs and files no recent version needs.

    python jobs/maintain.py vacuum --config conf/local.yaml [--retention-hours 168] [--dry-run]
        [--tables features,scores] [--force]

A retention below lake.min_vacuum_retention_hours (default 168) is refused unless --force:
stop every job on the lake first. Prints the removed files per table (JSON).
"""

from __future__ import annotations

import json
import sys

from cdtm.cli import load, parser, setup_logging
from cdtm.maintenance import MaintenanceError, vacuum_lake


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("command", choices=["vacuum"])
    p.add_argument("--retention-hours", type=float, default=None)
    p.add_argument("--tables", default=None, help="comma list (default: every table)")
    p.add_argument("--dry-run", action="store_true", help="list the files, delete nothing")
    p.add_argument("--force", action="store_true", help="allow a retention below the minimum")
    args = p.parse_args(argv)
    setup_logging()
    cfg = load(args)
    try:
        removed = vacuum_lake(
            cfg,
            args.retention_hours,
            tables=args.tables.split(",") if args.tables else None,
            force=args.force,
            dry_run=args.dry_run,
        )
    except MaintenanceError as e:
        print(f"maintain failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(removed, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

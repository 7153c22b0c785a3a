"""Lake maintenance: vacuum (remove orphaned and expired files) with a retention safety check.

Files of a write that never committed (a killed job) are never read: readers take the file
list from the Delta log. They only cost space until ``vacuum`` removes them, together with
files that no version younger than the retention needs.
"""

from __future__ import annotations

import logging

from cdtm.config import Config
from cdtm.lake import Lake
from cdtm.sql import lake_tables

log = logging.getLogger(__name__)


class MaintenanceError(RuntimeError):
    """A maintenance command refused to run; nothing was deleted."""


def vacuum_lake(
    cfg: Config,
    retention_hours: float | None = None,
    *,
    tables: list[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> dict[str, list[str]]:
    """Vacuum ``tables`` (default: every table under lake.root); returns the files per table.

    A retention below ``lake.min_vacuum_retention_hours`` needs ``force``: it can delete files
    that a reader of an older version, or a job writing right now, still needs.
    """
    lake = Lake.of(cfg.lake)
    minimum = cfg.lake.min_vacuum_retention_hours
    hours = minimum if retention_hours is None else retention_hours
    if hours < 0:
        raise MaintenanceError(f"vacuum: retention must be >= 0 hours, got {hours}")
    if hours < minimum and not force:
        raise MaintenanceError(
            f"vacuum: retention {hours:g} h is below lake.min_vacuum_retention_hours={minimum:g} h. "
            "Files of a job still writing, and of versions a reader may still use, would be "
            "deleted. Stop every job on this lake first, then pass --force."
        )
    present = lake_tables(lake)
    names = tables or present
    unknown = sorted(set(names) - set(present))
    if unknown:
        raise MaintenanceError(f"vacuum: no Delta tables {unknown} under {lake.root}")
    removed = {}
    for name in names:
        removed[name] = lake.vacuum(name, hours, dry_run=dry_run)
        log.info(
            "vacuum %s (retention %g h)%s: %d files",
            lake.path(name),
            hours,
            " [dry run]" if dry_run else "",
            len(removed[name]),
        )
    return removed

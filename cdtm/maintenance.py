"""Lake maintenance: vacuum (remove orphaned and expired files) with a retention safety check.

Files of a write that never committed (a killed job) are never read: readers take the file
list from the Delta log. They only cost space until ``vacuum`` removes them, together with
files that no version younger than the retention needs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cdtm.config import Config
from cdtm.lake import Lake
from cdtm.spec import published_versions
from cdtm.sql import lake_tables

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

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
    spark: SparkSession | None = None,
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
    names = _tables(lake, tables, "vacuum")
    held = _held_by_features(lake)
    removed: dict[str, list[str]] = {}
    for name in names:
        if name in held:
            log.warning("vacuum %s: skipped: %s", lake.path(name), held[name])
            removed[name] = []
            continue
        removed[name] = lake.vacuum(name, hours, dry_run=dry_run, spark=spark)
        log.info(
            "vacuum %s (retention %g h)%s: %d files",
            lake.path(name),
            hours,
            " [dry run]" if dry_run else "",
            len(removed[name]),
        )
    return removed


def _held_by_features(lake: Lake) -> dict[str, str]:
    """Tables whose files vacuum must keep: the published ``features`` version names the
    ``vocab``/``feature_spec``/``rejects`` versions it was built with (an ETL re-indexes from
    that vocab; training and scoring read that spec). Where a run that never published (a killed
    one) committed a newer version since, vacuum would delete the named version's files, so
    such a table waits until a day is published again."""
    if not lake.exists("features"):
        return {}
    version = lake.version("features")
    linked = published_versions(lake.root, version)
    held = {}
    for table, wanted in linked.items():
        if table != "features" and lake.exists(table) and lake.version(table) != wanted:
            held[table] = (
                f"features v{version} names {table} v{wanted}, superseded by v{lake.version(table)} "
                "from a run that did not publish; vacuumed once a day is published again"
            )
    return held


def _tables(lake: Lake, tables: list[str] | None, command: str) -> list[str]:
    present = lake_tables(lake)
    names = tables or present
    unknown = sorted(set(names) - set(present))
    if unknown:
        raise MaintenanceError(f"{command}: no Delta tables {unknown} under {lake.root}")
    return names


def optimize_lake(
    spark: SparkSession, cfg: Config, tables: list[str] | None = None, ds: str | None = None
) -> dict[str, dict[str, Any]]:
    """Compact small files (of day ``ds`` when given) with Delta's OPTIMIZE."""
    lake = Lake.of(cfg.lake)
    return {name: lake.optimize(spark, name, ds) for name in _tables(lake, tables, "optimize")}


def purge_lake(spark: SparkSession, cfg: Config, tables: list[str]) -> list[str]:
    """Rewrite files that carry deletion vectors (REORG ... APPLY (PURGE)), so that a file list
    of the new version holds only live rows (the training reader reads file lists)."""
    lake = Lake.of(cfg.lake)
    names = _tables(lake, tables, "purge")
    for name in names:
        lake.purge_deletion_vectors(spark, name)
        log.info("purge %s: deletion vectors rewritten", lake.path(name))
    return names


def register_lake(spark: SparkSession, cfg: Config) -> list[str]:
    """Register every table of the lake in the metastore (a lake written before names)."""
    lake = Lake.of(cfg.lake)
    if not lake.schema:
        raise MaintenanceError("register: lake.schema is null, so tables are not registered")
    return lake.register_all(spark, lake_tables(lake))

"""Run a job as its own process group, kill it at a fault point or when a condition turns true,
and fingerprint tables so that "exactly as before" is checked row by row."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cdtm.lake import Lake
from tests.conftest import REPO


def run_job(
    args: Sequence[str],
    log: Path,
    *,
    faults: str | None = None,
    kill_when: Callable[[], bool] | None = None,
    kill_after: float | None = None,
    timeout: float = 600,
) -> tuple[int, bool]:
    """``python <args>`` from the repo root. Returns (exit code, killed by us).

    The whole process group (driver, its JVM, Python workers) gets SIGKILL when ``kill_when``
    turns true or ``kill_after`` seconds pass; it is always reaped before returning.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPARK_LOCAL_IP": "127.0.0.1"}
    # Each job's metastore beside its log: none lands in the repo, and no two tests share one.
    env.setdefault("CDTM_WAREHOUSE", str(log.parent / "warehouse"))
    env.pop("CDTM_FAULTS", None)
    if faults:
        env["CDTM_FAULTS"] = faults
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        start, killed = time.time(), False
        try:
            while proc.poll() is None:
                elapsed = time.time() - start
                if (kill_when is not None and kill_when()) or (
                    kill_after is not None and elapsed >= kill_after
                ):
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                if elapsed > timeout:
                    raise TimeoutError(f"{args} ran over {timeout}s; log {log}")
                time.sleep(0.02)
            rc = proc.wait()
        finally:
            try:  # the JVM and workers of a driver that killed itself are still running
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return rc, killed


def fingerprint(
    lake: Lake, table: str, drop: Sequence[str] = (), version: int | None = None
) -> tuple[int, int, str]:
    """(version, rows, SHA-256 of the rows sorted) of one version (default: the current)."""
    from cdtm.lake import query

    version = lake.version(table) if version is None else version
    df = query("SELECT * FROM t", {"t": lake.path(table)}, {"t": version}).to_pandas()
    df = df.drop(columns=[c for c in drop if c in df.columns])
    for c in df.columns:  # list cells (feature_spec's domains) as text, so they hash and sort
        if df[c].map(lambda v: isinstance(v, (list, np.ndarray))).any():
            df[c] = df[c].map(lambda v: json.dumps(list(v)) if v is not None else None)
    df = df.sort_values(list(df.columns)).reset_index(drop=True)
    digest = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return version, len(df), digest.hexdigest()


def data_files(lake: Lake, table: str) -> set[str]:
    root = Path(lake.path(table))
    return {str(p) for p in root.rglob("*.parquet")}


def orphans(lake: Lake, table: str) -> set[str]:
    """Files on disk that no version of the table's log names (left by killed writers)."""
    from deltalake import DeltaTable

    dt = DeltaTable(lake.path(table))
    named: set[str] = set()
    for v in range(dt.version() + 1):
        named |= {u.removeprefix("file://") for u in Lake(lake.root).files(table, v)}
    return {f for f in data_files(lake, table) if f not in named}


def after_first_file(lake: Lake, table: str, delay: float = 0.0) -> Callable[[], bool]:
    """True ``delay`` seconds after the first new data file of ``table`` appears on disk."""
    before = data_files(lake, table)
    seen: list[float] = []

    def ready() -> bool:
        if not seen:
            if data_files(lake, table) - before:
                seen.append(time.time())
            else:
                return False
        return time.time() >= seen[0] + delay

    return ready

"""Soak: the nightly pipeline over a 7-day backfill, twice on the same lake; every table's rows
and checksums must be identical between the passes (`make soak`; not part of `make test`).

    python -m tests.reliability.soak [--days 7] [--rows 50000] [--work DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cdtm.lake import Lake
from tests.reliability.helpers import fingerprint, run_job

TABLES = ("features", "rejects", "vocab", "feature_spec", "scores")
VOLATILE = {"scores": ["scored_at"]}


def snapshot(lake: Lake) -> dict[str, tuple[int, str]]:
    """Rows and checksum per table (versions differ between passes by design)."""
    return {t: fingerprint(lake, t, drop=VOLATILE.get(t, []))[1:] for t in TABLES}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--rows", type=int, default=50_000, help="synthetic events per day")
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="cdtm-soak-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "lake", ignore_errors=True)
    shutil.rmtree(work / "artifacts", ignore_errors=True)
    start = dt.date(2024, 7, 1)
    end = start + dt.timedelta(days=args.days - 1)
    sets = [
        f"lake.root={work / 'lake'}",
        f"artifacts.root={work / 'artifacts'}",
        f"dataset.source.synthetic.rows={args.rows}",
        "pipeline.train=reuse",
        "train.backend=single",
    ]
    cmd = [
        "jobs/pipeline.py",
        "--config",
        "conf/local.yaml",
        "--config",
        "conf/datasets/synthetic.yaml",
        "--config",
        "conf/profiles/tiny.yaml",
        "--from",
        start.isoformat(),
        "--to",
        end.isoformat(),
        *[x for s in sets for x in ("--set", s)],
    ]
    lake = Lake(str(work / "lake"))
    passes = []
    for n in (1, 2):
        t0 = time.time()
        rc, _ = run_job(cmd, work / f"pass{n}.log", timeout=7200)
        if rc != 0:
            print(f"pass {n} failed (rc {rc}); log {work / f'pass{n}.log'}", file=sys.stderr)
            return 1
        passes.append(snapshot(lake))
        print(f"pass {n}: {time.time() - t0:.0f}s, {json.dumps(passes[-1])}")
    same = passes[0] == passes[1]
    rows = sum(n for n, _ in passes[0].values())
    print(
        json.dumps(
            {
                "days": args.days,
                "rows_checked_per_pass": rows,
                "identical": same,
                "tables": {
                    t: {"rows": passes[0][t][0], "same": passes[0][t] == passes[1][t]}
                    for t in TABLES
                },
            },
            indent=2,
        )
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

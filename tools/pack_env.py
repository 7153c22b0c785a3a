"""Pack the project's venv for workers that do not have it: ``make dist`` -> dist/env.tar.gz.

spark-submit ships the archive with ``--archives dist/env.tar.gz#environment`` and points the
Python workers at it with ``--conf spark.pyspark.python=./environment/bin/python`` (README,
"On a cluster"). What goes in:

- a copy of ``.venv`` (hard links, so the copy costs no disk), from which the editable install
  of this checkout, the ``dev`` extras and cmake (the Horovod build's) are removed;
- the library's wheel (``dist/cdtm_spark-*.whl``) installed in their place, so that nothing in
  the archive refers back to this checkout;
- script shebangs retargeted to the copy, so that venv-pack rewrites them as relocatable.

Like every venv-pack archive, ``bin/python`` stays a link to the base interpreter
(``pyvenv.cfg``'s ``home``): the workers need that Python at the same path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
# Build-time only: the Horovod build's cmake.
BUILD_ONLY = ("cmake",)


class PackError(RuntimeError):
    """The environment cannot be packed as it is; the message says what to do."""


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name


def dev_only_packages(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The ``dev`` extras that the wheel itself does not need."""
    project = tomllib.loads(pyproject.read_text())["project"]
    runtime = {_name(r).lower() for r in project["dependencies"]}
    dev = [_name(r) for r in project["optional-dependencies"]["dev"]]
    return [n for n in dev if n.lower() not in runtime] + list(BUILD_ONLY)


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise PackError(f"{' '.join(cmd[:4])} ...: {(done.stderr or done.stdout).strip()[-2000:]}")


def _retarget_scripts(copy: Path, original: Path) -> None:
    """Scripts in bin/ name the original venv's python; point them at the copy's.

    Each file is written anew (never in place): the copy's files are hard links to the venv's.
    """
    old, new = str(original).encode(), str(copy).encode()
    for f in (copy / "bin").iterdir():
        if f.is_symlink() or not f.is_file():
            continue
        data = f.read_bytes()
        if old not in data[:4096]:
            continue
        mode = f.stat().st_mode
        f.unlink()
        f.write_bytes(data.replace(old, new))
        f.chmod(mode)


def _refs_to(copy: Path, path: Path) -> list[str]:
    """Files of the copy that name ``path`` (.pth files, direct_url.json, scripts)."""
    needle = str(path).encode()
    site = list(copy.glob("lib/python*/site-packages"))
    candidates = [p for s in site for p in s.glob("*.pth")]
    candidates += [p for s in site for p in s.glob("*.dist-info/direct_url.json")]
    candidates += [p for p in (copy / "bin").iterdir() if p.is_file() and not p.is_symlink()]
    return sorted(str(p.relative_to(copy)) for p in candidates if needle in p.read_bytes())


def pack(venv: Path, wheel: Path, output: Path, compress_level: int = 4) -> Path:
    """Pack ``venv`` with ``wheel`` in place of the checkout's editable install."""
    import venv_pack

    venv, wheel, output = venv.resolve(), wheel.resolve(), output.resolve()
    if not (venv / "pyvenv.cfg").is_file():
        raise PackError(f"{venv}: not a venv (no pyvenv.cfg); run `make setup` first")
    if not wheel.is_file():
        raise PackError(f"{wheel}: no such wheel; `make dist` builds it")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".pack-") as tmp:
        copy = Path(tmp) / "env"
        # Hard links where the file system allows them (same device), else a plain copy.
        if subprocess.run(["cp", "-al", str(venv), str(copy)], capture_output=True).returncode:
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(venv, copy, symlinks=True)
        _retarget_scripts(copy, venv)
        python = str(copy / "bin" / "python")
        installed = subprocess.run(
            [python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True
        ).stdout.lower()
        drop = [n for n in ["cdtm-spark", *dev_only_packages()] if f"{n.lower()}==" in installed]
        if drop:
            _run([python, "-m", "pip", "uninstall", "-y", "-q", *drop])
        _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
        _run([python, "-m", "pip", "check"])
        refs = _refs_to(copy, REPO)
        if refs:
            raise PackError(f"the packed environment still refers to {REPO}: {refs}")
        venv_pack.pack(
            prefix=str(copy), output=str(output), force=True, compress_level=compress_level
        )
    return output


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=REPO / ".venv")
    ap.add_argument("--wheel", type=Path, required=True)
    ap.add_argument("--output", type=Path, default=REPO / "dist" / "env.tar.gz")
    ap.add_argument("--compress-level", type=int, default=4, choices=range(10))
    args = ap.parse_args(argv)
    try:
        out = pack(args.venv, args.wheel, args.output, args.compress_level)
    except PackError as e:
        print(f"pack_env: {e}", file=sys.stderr)
        return 1
    print(f"packed {out} ({os.path.getsize(out) / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

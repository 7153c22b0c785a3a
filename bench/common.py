"""Timing and memory helpers shared by the benchmarks.

Every figure is a median over ``repeats`` runs, and every target is a ratio against a
baseline measured in the same process: these machines are shared and noisy.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any], repeats: int, label: str) -> tuple[float, list[float], Any]:
    """Median seconds of ``repeats`` calls, every time, and the last call's result."""
    times, out = [], None
    for i in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        log(f"{label} run {i + 1}/{repeats}: {times[-1]:.2f}s")
    return statistics.median(times), times, out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


class PeakRss:
    """Peak resident memory of this process and its children (the JVM, Python workers),
    sampled every ``interval`` seconds while the block runs. ``.mb`` after exit."""

    def __init__(self, interval: float = 0.1, pid: int | None = None) -> None:
        self.interval = interval
        self.proc = psutil.Process(pid or os.getpid())
        self.peak = 0
        self.peak_self = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            own = self.proc.memory_info().rss
            total = own
            for child in self.proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            return
        self.peak = max(self.peak, total)
        self.peak_self = max(self.peak_self, own)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def mb(self) -> float:
        return round(self.peak / 2**20, 1)

    @property
    def self_mb(self) -> float:
        return round(self.peak_self / 2**20, 1)


def run_child(module: str, args: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m module`` with a JSON argument; it prints one JSON line last."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", module, json.dumps(args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run_children(
    module: str, many: Sequence[dict[str, Any]], timeout: float = 1800
) -> list[dict[str, Any]]:
    """``run_child`` for each of ``many`` at the same time (processes that share the machine)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, json.dumps(args)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in many
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"{module} failed (rc {p.returncode}):\n{err[-4000:]}")
            outs.append(dict(json.loads(out.strip().splitlines()[-1])))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def max_rss_mb() -> float:
    """This process's peak RSS so far: VmHWM, which starts afresh at exec. (ru_maxrss does not:
    a child started by fork + exec reports the parent's peak when that was higher.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")

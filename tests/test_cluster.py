"""spark-submit of the nightly pipeline to a real Spark standalone cluster on 127.0.0.1.

A master and a worker are started from the pip pyspark distribution (``bin/spark-class``).
The worker cannot see this checkout: it runs in its own mount namespace with a tmpfs over the
repository (so over ``.venv`` too) and a copy of Spark's home outside it. The job ships what a
real cluster needs, as ``make dist`` builds it: the packed environment with ``--archives
env.tar.gz#environment`` and ``spark.pyspark.python=./environment/bin/python`` (the library is
installed in it from its wheel). The test stops both processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyspark
import pytest

from cdtm.lake import query
from cdtm.spark import submit_args
from tests.conftest import REPO
from tools.pack_env import pack

SPARK_HOME = Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(path: Path, text: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        assert proc.poll() is None, path.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    raise AssertionError(
        f"{text!r} not in {path} after {seconds}s:\n" + path.read_text(errors="replace")[-3000:]
    )


def hidden_checkout(cmd: list[str]) -> list[str]:
    """``cmd`` in a mount namespace where the checkout (and its .venv) is an empty tmpfs."""
    script = f'mount -t tmpfs tmpfs "{REPO}" && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, "hidden", *cmd]


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    if shutil.which("unshare") is None or subprocess.run(hidden_checkout(["true"])).returncode:
        pytest.skip("needs unshare --mount and tmpfs (root or a user namespace) to hide .venv")
    # The worker's Spark: a copy outside the checkout (hard links where the disk allows).
    worker_home = tmp_path / "spark-home"
    if subprocess.run(["cp", "-al", str(SPARK_HOME), str(worker_home)]).returncode:
        shutil.copytree(SPARK_HOME, worker_home, symlinks=True)
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    logs = {name: tmp_path / f"{name}.log" for name in ("master", "worker")}
    procs: list[subprocess.Popen] = []
    try:
        with open(logs["master"], "w") as out:
            procs.append(
                subprocess.Popen(
                    [
                        spark_class,
                        "org.apache.spark.deploy.master.Master",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--webui-port",
                        str(free_port()),
                    ],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_for(logs["master"], "I have been elected leader", procs[0])
        venv_bin = str(Path(sys.executable).parent)
        worker_env = {
            **{k: v for k, v in env.items() if not k.startswith("PYSPARK_")},
            "SPARK_HOME": str(worker_home),
            "PATH": ":".join(p for p in os.environ["PATH"].split(":") if p != venv_bin),
        }
        with open(logs["worker"], "w") as out:
            procs.append(
                subprocess.Popen(
                    hidden_checkout(
                        [
                            str(worker_home / "bin" / "spark-class"),
                            "org.apache.spark.deploy.worker.Worker",
                            url,
                            "--host",
                            "127.0.0.1",
                            "--cores",
                            "2",
                            "--memory",
                            "3g",
                            "--webui-port",
                            str(free_port()),
                            "--work-dir",
                            str(tmp_path / "work"),
                        ]
                    ),
                    env=worker_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_for(logs["worker"], "Successfully registered with master", procs[1])
        yield url, env
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_spark_submit_pipeline_to_a_standalone_cluster(cluster, tmp_path: Path) -> None:
    url, env = cluster
    wheel_dir = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(REPO)],
        check=True,
    )
    # Level 0: the test spends no time compressing what it unpacks a minute later.
    archive = pack(
        Path(sys.executable).parent.parent,
        next(wheel_dir.glob("cdtm_spark-*.whl")),
        tmp_path / "env.tar.gz",
        compress_level=0,
    )
    lake = tmp_path / "lake"
    cmd = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--master",
        url,
        "--conf",
        "spark.driver.host=127.0.0.1",
        "--conf",
        "spark.driver.bindAddress=127.0.0.1",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.executor.memory=2g",
        "--archives",
        f"{archive}#environment",
        "--conf",
        "spark.pyspark.python=./environment/bin/python",
        "--conf",
        f"spark.pyspark.driver.python={sys.executable}",
        *submit_args(str(tmp_path / "warehouse")),
        "jobs/pipeline.py",
        "--config",
        "conf/local.yaml",
        "--config",
        "conf/datasets/synthetic.yaml",
        "--config",
        "conf/profiles/tiny.yaml",
        "--set",
        f"lake.root={lake}",
        "--set",
        f"artifacts.root={tmp_path / 'art'}",
        "--set",
        "train.backend=single",
        "--set",
        "dataset.source.synthetic.rows=3000",
        "--set",
        "train.max_epochs=1",
        "--ds",
        "2024-06-01",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Asked to launch executor" in (tmp_path / "worker.log").read_text()  # ran on the worker
    # The executors unpacked the environment in their own folder and ran Python from it.
    unpacked = list((tmp_path / "work").glob("app-*/*/environment/bin/python"))
    assert unpacked, sorted(str(p) for p in (tmp_path / "work").rglob("*"))[:50]
    rows = query(
        "SELECT ds, COUNT(*) AS n FROM s GROUP BY ds", {"s": str(lake / "scores")}
    ).to_pylist()
    assert rows == [{"ds": "2024-06-01", "n": 3000}]
    assert (lake / "_pipeline" / "2024-06-01.json").is_file()
    # The Spark engine wrote it (delta-spark's commits) and named it in the metastore.
    log = (lake / "scores" / "_delta_log" / "00000000000000000000.json").read_text()
    assert "Delta-Lake/" in log
    assert (tmp_path / "warehouse" / "metastore_db").is_dir()

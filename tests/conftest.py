"""One Spark session for the whole test run (local[2], UI off, loopback only)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def data_dir() -> Path:
    """MovieLens files: $CDTM_DATA_DIR, default ../shared/data beside the repo."""
    return Path(os.environ.get("CDTM_DATA_DIR") or REPO.parent / "shared" / "data")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from cdtm.config import SparkConf
    from cdtm.spark import build_session

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = build_session(
        SparkConf(
            master="local[2]",
            app_name="cdtm-tests",
            conf={
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.sql.shuffle.partitions": "4",
                "spark.sql.session.timeZone": "UTC",
                "spark.default.parallelism": "4",
            },
            warehouse=str(warehouse),
        )
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    path = data_dir()
    if not (path / "movielens-100k" / "ml-100k.inter").is_file():
        pytest.skip(
            f"MovieLens files not found under {path} (set CDTM_DATA_DIR or run `make data`)"
        )
    return path


def lake_config(lake_root: Path, dataset: str, *overrides: str, profile: bool = False):
    """Config for a test lake: conf/local.yaml + a shipped dataset spec (+ the tiny profile)."""
    from cdtm.config import load_config

    files = [REPO / "conf" / "local.yaml", REPO / "conf" / "datasets" / f"{dataset}.yaml"]
    if profile:
        files.append(REPO / "conf" / "profiles" / "tiny.yaml")
    return load_config(
        files,
        [f"lake.root={lake_root}", f"artifacts.root={lake_root.parent / 'artifacts'}", *overrides],
    )


def tiny_config(base, *overrides: str):  # noqa: ANN001, ANN201
    """The tiny profile over the lake and artifacts folder of ``base`` (later overrides win)."""
    from cdtm.config import load_config

    files = [REPO / "conf" / "local.yaml", REPO / "conf" / "profiles" / "tiny.yaml"]
    return load_config(
        files, [f"lake.root={base.lake.root}", f"artifacts.root={base.artifacts.root}", *overrides]
    )


@pytest.fixture(scope="session")
def ml100k(spark, movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """MovieLens-100K through the ETL once per session: (config, report)."""
    from feature_etl.etl import run_etl

    os.environ["CDTM_DATA_DIR"] = str(movielens_dir)
    cfg = lake_config(
        tmp_path_factory.mktemp("ml100k") / "lake", "movielens-100k", "run.ds=2024-03-01"
    )
    return cfg, run_etl(spark, cfg)


@pytest.fixture(scope="session")
def synthetic_lake(spark, tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic set (4 domains, sparse target) through the ETL: (config, report)."""
    from feature_etl.etl import run_etl

    cfg = lake_config(
        tmp_path_factory.mktemp("synthetic") / "lake",
        "synthetic",
        "dataset.source.synthetic.rows=30000",
        "dataset.source.synthetic.users=500",
        "dataset.source.synthetic.items=300",
        "dataset.source.synthetic.target_share=0.1",
        profile=True,
    )
    return cfg, run_etl(spark, cfg)

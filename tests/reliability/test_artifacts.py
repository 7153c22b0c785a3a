"""Safe artifacts: the manifest refuses tampered, truncated or unlisted files; weights load
without running pickled code; config names cannot reach outside the lake or artifact roots;
no credential from the environment ends up in logs or artifacts."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from cdtm.config import ConfigError, load_config
from cdtm.train.artifacts import MANIFEST, ArtifactError, load_artifact, seal
from tests.conftest import REPO
from tests.conftest import tiny_config as tiny
from tests.reliability.helpers import run_job


@pytest.fixture(scope="module")
def artifact(synthetic_lake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdtm.train.job import train_model

    cfg = tiny(synthetic_lake[0], "train.max_epochs=1", "train.plots=false")
    root = tmp_path_factory.mktemp("art")
    cfg = dataclasses.replace(cfg, artifacts=dataclasses.replace(cfg.artifacts, root=str(root)))
    return train_model(cfg).artifact


def copy(artifact: Path, tmp_path: Path) -> Path:
    out = tmp_path / artifact.name
    shutil.copytree(artifact, out)
    load_artifact(out)  # the untouched copy loads
    return out


def test_tampered_truncated_or_unlisted_files_are_refused(artifact: Path, tmp_path: Path) -> None:
    a = copy(artifact, tmp_path / "a")
    (a / "model.json").write_text((a / "model.json").read_text().replace("16", "17"))
    with pytest.raises(ArtifactError, match="model.json does not match its SHA-256"):
        load_artifact(a)

    b = copy(artifact, tmp_path / "b")
    data = (b / "weights.pt").read_bytes()
    (b / "weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="weights.pt .*tampered or truncated"):
        load_artifact(b)

    c = copy(artifact, tmp_path / "c")
    manifest = (c / MANIFEST).read_text()
    (c / MANIFEST).write_text(manifest.replace('"weights.pt"', '"weights-old.pt"'))
    with pytest.raises(ArtifactError, match=r"does not cover \['weights.pt'\]"):
        load_artifact(c)

    d = copy(artifact, tmp_path / "d")
    (d / "feature_spec.json").unlink()
    with pytest.raises(ArtifactError, match="feature_spec.json listed in the manifest is missing"):
        load_artifact(d)


class Payload:
    def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does on load
        return (os.system, (f"touch {os.environ['CDTM_CANARY_FILE']}",))


def test_weights_never_run_pickled_code_even_with_a_resealed_manifest(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CDTM_CANARY_FILE", str(marker))
    evil = copy(artifact, tmp_path / "evil")
    state = torch.load(evil / "weights.pt", weights_only=True)
    state["payload"] = Payload()
    torch.save(state, evil / "weights.pt")
    seal(evil)  # whoever can write the folder can also re-seal it
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_artifact(evil)
    assert not marker.exists()


def test_bad_manifests_are_refused_naming_the_file(artifact: Path, tmp_path: Path) -> None:
    a = copy(artifact, tmp_path / "a")
    (a / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match=f"{a / MANIFEST}: not a JSON manifest"):
        load_artifact(a)

    b = copy(artifact, tmp_path / "b")
    (b / MANIFEST).write_text('["weights.pt"]')
    with pytest.raises(ArtifactError, match="not a {file: sha256} object"):
        load_artifact(b)

    for outside in ("/etc/hostname", "../" + artifact.name + "/weights.pt", "sub/../../x"):
        c = copy(artifact, tmp_path / f"c{len(outside)}")
        manifest = json.loads((c / MANIFEST).read_text())
        manifest[outside] = "0" * 64
        (c / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match="is not a plain name inside the artifact"):
            load_artifact(c)


def test_hostile_weights_are_refused_on_the_driver_naming_the_file(
    spark, synthetic_lake, artifact: Path, tmp_path: Path
) -> None:
    """Weights that pass a re-sealed manifest but are not this model's: scoring refuses them
    before any executor starts, naming weights.pt, and writes nothing."""
    from cdtm.lake import Lake
    from cdtm.scoring import ScoringError, score_day

    bad = copy(artifact, tmp_path / "root")
    state = torch.load(bad / "weights.pt", weights_only=True)
    name = next(iter(state))
    state[name] = torch.zeros(3, 3)  # the wrong shape
    torch.save(state, bad / "weights.pt")
    seal(bad)
    with pytest.raises(ArtifactError, match=r"weights.pt: does not load \(RuntimeError"):
        load_artifact(bad)
    lake = Lake(synthetic_lake[0].lake.root)
    before = lake.version("scores") if lake.exists("scores") else None
    cfg = tiny(
        synthetic_lake[0], f"artifacts.root={tmp_path / 'root'}", f"scoring.model={bad.name}"
    )
    with pytest.raises(ScoringError, match=f"{bad / 'weights.pt'}: does not load"):
        score_day(spark, cfg)
    assert (lake.version("scores") if lake.exists("scores") else None) == before


@pytest.mark.parametrize(
    "override",
    [
        "train.model_version=../../outside",
        "train.model_version=/tmp/abs",
        "scoring.model=../other-root/model",
        "scoring.table=../../etc",
    ],
)
def test_names_from_config_cannot_leave_their_root(override: str) -> None:
    with pytest.raises(ConfigError, match="must be a plain name"):
        load_config([REPO / "conf" / "local.yaml"], [override])


SECRETS = {
    "DATABRICKS_TOKEN": "dapi-canary-5f1e0c",
    "MLFLOW_TRACKING_TOKEN": "mlflow-canary-77ab",
    "AWS_SECRET_ACCESS_KEY": "aws-canary-9c3d",
}


def test_no_credential_reaches_logs_or_artifacts(
    synthetic_lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    lake = synthetic_lake[0].lake.root
    sets = [
        f"lake.root={lake}",
        f"artifacts.root={tmp_path / 'art'}",
        "train.backend=single",
        "train.max_epochs=1",
        "train.model_version=canary",
        "tracking.enabled=true",
        f"tracking.uri={tmp_path / 'mlruns'}",
    ]
    args = ["jobs/train.py", "--config", "conf/local.yaml", "--config", "conf/profiles/tiny.yaml"]
    rc, _ = run_job([*args, *[x for s in sets for x in ("--set", s)]], tmp_path / "train.log")
    assert rc == 0, (tmp_path / "train.log").read_text()[-3000:]
    checked = 0
    for path in [tmp_path / "train.log", *tmp_path.rglob("*")]:
        if path.is_file():
            blob = path.read_bytes()
            checked += 1
            for name, secret in SECRETS.items():
                assert secret.encode() not in blob, f"{name} leaked into {path}"
    assert checked > 10 and (tmp_path / "art" / "canary" / MANIFEST).is_file()

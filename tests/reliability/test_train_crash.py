"""SIGKILL a training run mid-epoch, in one process, as 2 Horovod ranks on Spark and as 2
TorchDistributor processes: `--resume` finishes it from the last checkpoint, and the final
test AUC is within 0.002 of an uninterrupted run of the same config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.helpers import run_job

COMMON = [
    "train.max_epochs=3",
    "train.patience=5",
    "train.checkpoint_every=3",
    "train.plots=false",
    "spark.master=local[2]",
]


def args_for(lake: str, art: Path, *extra: str) -> list[str]:
    sets = [f"lake.root={lake}", f"artifacts.root={art}", *COMMON, *extra]
    return [
        "jobs/train.py",
        "--config",
        "conf/local.yaml",
        "--config",
        "conf/profiles/tiny.yaml",
        *[x for s in sets for x in ("--set", s)],
    ]


def auc(art: Path, version: str) -> float:
    return float(json.loads((art / version / "metrics.json").read_text())["test.auc.pooled"])


def kill_and_resume(lake: str, tmp_path: Path, *extra: str) -> tuple[float, float]:
    """(AUC of the killed-then-resumed run, AUC of an uninterrupted run)."""
    art = tmp_path / "art"
    killed = args_for(lake, art, "train.model_version=resumed", *extra)
    # Dies right after step 8, mid-epoch 1 and 2 steps past the checkpoint of step 6.
    rc, _ = run_job(killed, tmp_path / "killed.log", faults="train.step@8=kill")
    assert rc != 0
    assert list((art / "_checkpoints").glob("*/last.pt")), (tmp_path / "killed.log").read_text()[
        -2000:
    ]
    assert not (art / "resumed").exists()
    rc, _ = run_job([*killed, "--resume"], tmp_path / "resumed.log")
    log = (tmp_path / "resumed.log").read_text()
    assert rc == 0, log[-3000:]
    assert "resumed from" in log
    straight = args_for(lake, tmp_path / "art2", "train.model_version=straight", *extra)
    rc, _ = run_job(straight, tmp_path / "straight.log")
    assert rc == 0, (tmp_path / "straight.log").read_text()[-3000:]
    return auc(art, "resumed"), auc(tmp_path / "art2", "straight")


def test_killed_single_process_run_resumes_to_the_same_auc(synthetic_lake, tmp_path: Path) -> None:
    resumed, straight = kill_and_resume(
        synthetic_lake[0].lake.root, tmp_path, "train.backend=single"
    )
    assert abs(resumed - straight) <= 0.002, (resumed, straight)


def test_killed_horovod_run_resumes_to_the_same_auc(synthetic_lake, tmp_path: Path) -> None:
    pytest.importorskip("horovod.spark", reason="horovod not built: run `make horovod`")
    resumed, straight = kill_and_resume(
        synthetic_lake[0].lake.root,
        tmp_path,
        "train.backend=horovod-spark",
        "train.num_proc=2",
        "train.nics=[lo]",
        "train.ema=0.9",  # rank 0 reads the weight average back and broadcasts it
    )
    assert abs(resumed - straight) <= 0.002, (resumed, straight)


def test_killed_torch_distributor_run_resumes_to_the_same_auc(
    synthetic_lake, tmp_path: Path
) -> None:
    resumed, straight = kill_and_resume(
        synthetic_lake[0].lake.root,
        tmp_path,
        "train.backend=torch-distributor",
        "train.num_proc=2",
        "train.nics=[lo]",
        "train.ema=0.9",
    )
    assert abs(resumed - straight) <= 0.002, (resumed, straight)

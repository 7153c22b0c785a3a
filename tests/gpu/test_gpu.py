"""GPU check for a machine with CUDA (skipped elsewhere): one epoch of CDTM on the GPU."""

from __future__ import annotations

import pytest
import torch

from cdtm.config import load_config
from cdtm.train.job import train_model
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("amp", [False, True])
def test_one_epoch_of_cdtm_on_gpu(synthetic_lake, amp: bool) -> None:
    base, _ = synthetic_lake
    cfg = load_config(
        [REPO / "conf" / "local.yaml", REPO / "conf" / "profiles" / "tiny.yaml"],
        [
            f"lake.root={base.lake.root}",
            f"artifacts.root={base.artifacts.root}",
            "train.device=cuda",
            f"train.amp={str(amp).lower()}",
            "train.max_epochs=1",
            f"train.model_version=gpu-amp-{amp}",
        ],
    )
    result = train_model(cfg)
    assert result.metrics["test.auc.pooled"] > 0.55
    state = torch.load(result.artifact / "weights.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())  # artifacts load anywhere

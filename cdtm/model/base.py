"""The model interface: ``forward(batch) -> logits``; ``forward_train`` adds auxiliary losses."""

from __future__ import annotations

import torch
from torch import nn

from cdtm.data.batch import Batch
from cdtm.model.layers import pairwise_interaction


def flush_denormals() -> None:
    """Treat subnormal floats as zero on the CPU (x86 FTZ/DAZ; no-op where unsupported).

    Training drives some weights toward zero (weight decay, dead ReLU units) and leaves
    values below 1.2e-38 in them; x86 cores take a microcode assist on each, and a matmul
    over such weights ran 170 times slower (a benchmark run fell from 37k to 5k rows/s). The mode is per
    thread and new threads inherit it: call this before torch starts its intra-op pool.
    """
    torch.set_flush_denormal(True)


class CTRModel(nn.Module):
    """A multi-domain CTR model over a ``Batch``. Subclasses implement ``forward_train``."""

    interaction: bool = False  # model.interaction == "fm": see ``with_interaction``

    def with_interaction(self, logits: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``logits`` plus FM's pairwise term over the field embeddings ``z`` [B, F, k] when on."""
        return logits + pairwise_interaction(z) if self.interaction else logits

    def forward_train(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits [B] and named auxiliary losses (already weighted) for the training wrapper."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_train(batch)[0]

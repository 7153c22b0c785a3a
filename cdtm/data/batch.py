"""The typed mini-batch every model takes. Torch only.

Shapes (B rows, F categorical fields, E dense features, in the feature spec's order):
``domain`` [B] int64, ``label`` [B] float32, ``fields`` [B, F] int64 (0 = absent,
1 = out of vocabulary), ``dense`` [B, E] float32, ``row_id`` [B] int64.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Batch:
    domain: torch.Tensor
    label: torch.Tensor
    fields: torch.Tensor
    dense: torch.Tensor
    row_id: torch.Tensor

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in dataclasses.astuple(self)))

    def select(self, index: torch.Tensor) -> Batch:
        return Batch(*(t[index] for t in dataclasses.astuple(self)))

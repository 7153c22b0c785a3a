"""The seam that hides how many processes train: the loop only talks to a ``Backend``.

``single`` runs in this process with no Horovod import. Distributed backends (Horovod on
Spark executors, horovodrun) implement the same methods.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Backend(Protocol):
    rank: int
    size: int

    @property
    def is_main(self) -> bool: ...

    def allreduce_sum(self, value: torch.Tensor) -> torch.Tensor: ...

    def gather_arrays(self, value: torch.Tensor) -> torch.Tensor: ...

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def wrap_optimizer(
        self, optimizer: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer: ...


class SingleProcess:
    rank = 0
    size = 1

    @property
    def is_main(self) -> bool:
        return True

    def allreduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def gather_arrays(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        del model, optimizer

    def wrap_optimizer(
        self, optimizer: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        del model
        return optimizer

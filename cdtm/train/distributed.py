"""The seam that hides how many processes train: the loop only talks to a ``Backend``.

``SingleProcess`` runs in this process with no Horovod import. ``HorovodBackend`` is what each
rank uses when launched by ``horovod.spark.run`` (see ``cdtm/train/launch.py``) or ``horovodrun``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Backend(Protocol):
    rank: int
    size: int

    @property
    def is_main(self) -> bool: ...

    def gather_arrays(self, value: torch.Tensor) -> torch.Tensor: ...

    def broadcast_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
    ) -> None: ...

    def broadcast_object(self, obj: Any) -> Any: ...

    def wrap_optimizer(
        self, optimizer: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer: ...

    def allreduce_max(self, value: int) -> int: ...


class SingleProcess:
    rank = 0
    size = 1

    @property
    def is_main(self) -> bool:
        return True

    def gather_arrays(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def broadcast_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        del model, optimizer

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def wrap_optimizer(
        self, optimizer: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        del model
        return optimizer

    def allreduce_max(self, value: int) -> int:
        return value


class HorovodBackend:
    """One Horovod rank (Gloo on CPU, NCCL on GPU). Created once per process."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather_arrays(self, value: torch.Tensor) -> torch.Tensor:
        return self.hvd.allgather(value)  # concatenated along dim 0; lengths may differ by rank

    def broadcast_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        if optimizer is not None:
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def broadcast_object(self, obj: Any) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=0)

    def wrap_optimizer(
        self, optimizer: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        return self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    def allreduce_max(self, value: int) -> int:
        return int(self.hvd.allreduce(torch.tensor([value]), op=self.hvd.Max)[0])

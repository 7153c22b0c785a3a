"""The seam that hides how many processes train: the loop only talks to a ``Backend``.

``SingleProcess`` runs in this process with no Horovod import. ``HorovodBackend`` is what each
rank uses when launched by ``horovod.spark.run`` (see ``cdtm/train/launch.py``) or ``horovodrun``.
``TorchBackend`` is each process of a ``torch.distributed`` job started by PyTorch's
``TorchDistributor`` (or torchrun): Gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os
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
    local_size = 1  # training processes on this machine

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
        self.local_size = hvd.local_size()

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


class TorchBackend:
    """One process of a torch.distributed job. Gradients are averaged over the processes before
    each optimizer step with one all-reduce per parameter: DDP's reduction (the loop calls
    ``forward_train``, not ``forward``, so a DDP wrapper's hooks would not see the step)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.dist = dist
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        nccl = dist.get_backend() == "nccl"
        self.device = torch.device("cuda", self.local_rank) if nccl else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather_arrays(self, value: torch.Tensor) -> torch.Tensor:
        """Every process's rows concatenated in rank order (lengths may differ by rank)."""
        local = value.to(self.device)
        n = torch.tensor([local.shape[0]], device=self.device)
        lengths = [torch.zeros_like(n) for _ in range(self.size)]
        self.dist.all_gather(lengths, n)
        longest = int(max(int(x) for x in lengths))
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self.dist.all_gather(parts, padded)
        return torch.cat([p[: int(k)] for p, k in zip(parts, lengths)]).cpu()

    def broadcast_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        for tensor in model.state_dict().values():  # views of the parameters: updated in place
            self.dist.broadcast(tensor, src=0)
        if optimizer is not None:
            state = self.broadcast_object(optimizer.state_dict() if self.is_main else None)
            if not self.is_main:
                optimizer.load_state_dict(state)

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap_optimizer(
        self, optimizer: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        return _Averaged(optimizer, list(model.parameters()), self)  # type: ignore[return-value]

    def allreduce_max(self, value: int) -> int:
        t = torch.tensor([value], device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t[0])

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


class _Averaged:
    """An optimizer whose step first averages every gradient over the processes."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        backend: TorchBackend,
    ) -> None:
        self.optimizer, self.params, self.backend = optimizer, params, backend

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        dist = self.backend.dist
        for p in self.params:
            if p.grad is None:  # a part this batch did not reach: zeros, so every rank sends one
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= self.backend.size
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

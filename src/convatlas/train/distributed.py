"""Scale-out on PyTorch's own engine: DDP under ``torchrun`` (gloo on CPU, NCCL on CUDA).

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` reads them and joins
the process group. Without them everything degrades to one process and the helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from convatlas.train.config import ConfigError
from convatlas.utils import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, on ``device``.

    Attributes:
        owner: whether this process joined the process group (and so leaves it in :func:`cleanup`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owner: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, plots and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Pick the device and, when launched by ``torchrun``, join the process group (once per process).

    Args:
        device: ``"auto"`` (CUDA when available: the local rank's GPU under torchrun), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.

    Raises:
        ConfigError: (field ``device``) for a device this machine does not have.
    """
    chosen = resolve(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=chosen)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = chosen.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=target, owner=owner)


def resolve(device: str) -> torch.device:
    """:func:`convatlas.utils.resolve_device` for the ``device`` field.

    Raises:
        ConfigError: (field ``device``) for a device this machine does not have.
    """
    try:
        return resolve_device(device, "device")
    except ValueError as err:
        raise ConfigError("device", str(err).removeprefix("device ")) from None


def cleanup(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` joined it for ``info``."""
    if info.owner and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: Tensor, info: DistInfo) -> Tensor:
    """The sum of ``x`` over all processes (``x`` itself in one process)."""
    if info.distributed:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def any_true(flags: list[bool], info: DistInfo) -> list[bool]:
    """For each flag, whether it holds in any process (so that all of them act together), in one reduction."""
    if not info.distributed:
        return list(flags)
    total = all_reduce_sum(torch.tensor([float(f) for f in flags], device=info.device), info)
    return [bool(v > 0) for v in total.tolist()]


def gather(value, info: DistInfo) -> list:
    """Every process's ``value`` (any picklable object), in rank order; ``[value]`` in one process."""
    if not info.distributed:
        return [value]
    out = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's buffers (batch-norm statistics), so that all evaluate the same model."""
    if info.distributed:
        for b in model.buffers():
            dist.broadcast(b, 0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()

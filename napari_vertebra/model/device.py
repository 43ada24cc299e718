"""Device choice and the torchrun environment, shared by training and prediction."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

__all__ = ["DistInfo", "dist_info", "gather", "resolve_device", "setup_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or None/``"auto"`` (CUDA when available); a
    clear error for CUDA where there is none."""
    if isinstance(device, torch.device):
        device = str(device)
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r} (use cpu or cuda)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but CUDA is not available here "
            "(no NVIDIA GPU or a CPU-only PyTorch); use --device cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (use cpu or cuda)")
    return dev


class DistInfo(NamedTuple):
    """The process's place in a torchrun job (one process: not distributed, rank 0 of 1)."""

    distributed: bool
    rank: int
    world: int
    local_rank: int


def dist_info() -> DistInfo:
    """Rank and world size from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(
        world > 1,
        int(os.environ.get("RANK", "0")),
        world,
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def setup_device(device: str | None) -> tuple[torch.device, DistInfo]:
    """The device of this process and, under torchrun, the initialised process group
    (NCCL on CUDA, gloo on CPU; one GPU per process, by LOCAL_RANK)."""
    info = dist_info()
    if not info.distributed:
        return resolve_device(device), info
    import torch.distributed as dist

    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev, info


def gather(obj: Any, world: int) -> list[Any]:
    """``obj`` of every rank of a torchrun job, in rank order (every rank calls it;
    ``[obj]`` alone for one process)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out

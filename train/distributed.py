"""Processes and devices of a run: torchrun's rank and world size, the torch device for ``--device``, the process group."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from rn_deploy.errors import RnDeployError


def dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def pick_device(name: str, local_rank: int) -> torch.device:
    """The torch device for ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); under DDP ``cuda`` is this rank's GPU.

    Raises:
        RnDeployError: CUDA asked for without a GPU, or an unknown device name.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RnDeployError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
        return torch.device("cuda", local_rank if name == "cuda" else torch.device(name).index or 0)
    if name != "cpu":
        raise RnDeployError(f"unknown device {name!r}; use cuda, cpu or auto")
    return torch.device("cpu")


def init_distributed(dev: torch.device, world: int) -> None:
    """Join the process group under torchrun (NCCL on CUDA, gloo on CPU) and set this rank's CUDA device and math modes."""
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

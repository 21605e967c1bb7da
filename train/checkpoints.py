"""A run's checkpoint as resume state: the options it records, resuming from it, answering a finished run from it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rn_deploy.checkpoint import read_checkpoint
from rn_deploy.errors import CheckpointError

from .config import TrainConfig
from .result import TrainResult
from .schedule import OneCycle


def finished_result(cfg: TrainConfig, ckpt_path: Path, history: list[dict[str, float]], dev: torch.device, world: int,
                     n_train: int, n_val: int) -> TrainResult:
    """The result of resuming a run that had already trained every epoch: its last epoch's metrics, nothing new."""
    last = history[-1] if history else {}
    return TrainResult(
        checkpoint=str(ckpt_path), arch=cfg.arch, dataset=cfg.dataset, epochs=cfg.epochs,
        accuracy=last.get("accuracy", float("nan")), top5=last.get("top5"), val_loss=last.get("val_loss", float("nan")),
        train_loss=last.get("train_loss", float("nan")), images_per_second=0.0, seconds=0.0, device=str(dev), world_size=world,
        n_train=n_train, n_val=n_val, history=history, nothing_to_do=True,
    )


def run_options(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("history", None)
    return d


def resume_state(path: Path, cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint to resume and its optimiser state, refused when it was started with other options."""
    raw = read_checkpoint(path)
    state = raw.get("resume")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: has no optimiser state to resume from (it was not written by a training run)")
    saved = (raw.get("train") or {}).get("options", {})
    if "dataset" in saved:  # a run started under an older dataset name resumes under the current one
        from rn_deploy.datasets import ALIASES

        saved = {**saved, "dataset": ALIASES.get(saved["dataset"], saved["dataset"])}
    for key in ("arch", "dataset", "batch_size", "epochs", "lr", "limit", "schedule", "multi_scale"):
        if key in saved and json.loads(json.dumps(saved[key])) != json.loads(json.dumps(getattr(cfg, key))):
            raise CheckpointError(f"{path}: cannot resume with {key}={getattr(cfg, key)!r}; the run was started with {saved[key]!r}")
    return raw, state


def finished_run(path: Path, cfg: TrainConfig, dev: torch.device, world: int) -> TrainResult | None:
    """``--resume`` of a run that already trained every epoch, answered from its checkpoint alone (no data load).

    None when there is more to train, or the checkpoint predates the recorded image counts (the data then tells them).
    """
    if not path.exists():
        return None
    raw, state = resume_state(path, cfg)
    train = raw.get("train") or {}
    if int(state["epoch"]) < cfg.epochs or "n_train" not in train or "n_val" not in train:
        return None
    return finished_result(cfg, path, list(train.get("history", [])), dev, world, int(train["n_train"]), int(train["n_val"]))


def resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: OneCycle, cfg: TrainConfig) -> tuple[int, list[dict[str, float]]]:
    raw, state = resume_state(path, cfg)
    model.load_state_dict(raw["state_dict"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["epoch"]), list(raw["train"].get("history", []))

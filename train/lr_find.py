"""The learning-rate range test (fastai's ``lr_find``) and a plot of it.

The LR grows exponentially from ``start`` to ``end`` over ``iters`` mini-batches; the loss is
smoothed (exponential moving average, debiased) and the test stops once it exceeds 4x its
minimum. The suggestion is the LR of steepest descent of the smoothed loss before its minimum,
ignoring the first points (a debiased average of a few batches: noise, as fastai's ``skip_start``).
Model and optimiser state are restored afterwards.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rn_deploy.errors import RnDeployError
from rn_deploy.strictjson import ToDict


@dataclass
class LRFindResult(ToDict):
    lrs: list[float]
    losses: list[float]
    suggestion: float
    min_loss_lr: float
    stopped_early: bool


def _cycle(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def lr_find(model: nn.Module, opt: torch.optim.Optimizer, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
            start: float = 1e-7, end: float = 10.0, iters: int = 100, beta: float = 0.98, diverge: float = 4.0,
            loss_fn: nn.Module | None = None) -> LRFindResult:
    """Run the range test on ``model`` with ``opt``; both are restored to their state before the call."""
    if not 0 < start < end:
        raise RnDeployError(f"lr-find: need 0 < start < end, got {start} and {end}")
    if iters < 5:
        raise RnDeployError("lr-find: use at least 5 iterations")
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    crit = loss_fn or nn.CrossEntropyLoss()
    mult = (end / start) ** (1 / (iters - 1))
    lrs, losses = [], []
    avg, best, stopped = 0.0, math.inf, False
    model.train()
    try:
        for i, (x, y) in zip(range(iters), _cycle(loader), strict=False):
            lr = start * mult**i
            for g in opt.param_groups:
                g["lr"] = lr
            loss = crit(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.item())
            if not math.isfinite(value):
                stopped = True
                break
            avg = beta * avg + (1 - beta) * value
            smooth = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(smooth)
            best = min(best, smooth)
            if i > 5 and smooth > diverge * best:
                stopped = True
                break
    finally:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
    if len(losses) < 3:
        raise RnDeployError("lr-find: the loss diverged at once; lower --start")
    return LRFindResult(lrs, losses, suggest(lrs, losses), lrs[int(np.argmin(losses))], stopped)


def suggest(lrs: list[float], losses: list[float], skip_start: int = 10) -> float:
    """The LR of steepest descent of the loss (in log-LR) up to the loss minimum.

    The first ``skip_start`` points (at most half the way to the minimum) are left out: there the
    smoothed loss averages only a few batches, and one lucky batch looked like the steepest descent.
    """
    stop = int(np.argmin(losses))
    start = min(skip_start, stop // 2)
    if stop - start < 2:
        return lrs[stop]
    grads = np.gradient(np.array(losses[start: stop + 1]), np.log(np.array(lrs[start: stop + 1])))
    return float(lrs[start + int(np.argmin(grads))])


def plot_lr_find(res: LRFindResult, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rn_deploy._io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(res.lrs, res.losses)
    i = res.lrs.index(res.suggestion)
    ax.plot([res.suggestion], [res.losses[i]], "ro", label=f"suggestion {res.suggestion:.2e}")
    ax.set_xscale("log")
    # the divergence at the end would squash the interesting part of the curve
    ax.set_ylim(min(res.losses) * 0.95, min(max(res.losses), 1.5 * res.losses[0]) * 1.05)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("smoothed training loss")
    ax.set_title(title or "learning-rate range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def run_lr_find(cfg: Any, *, start: float = 1e-7, end: float = 10.0, iters: int = 100, out: str | Path | None = None
                ) -> tuple[LRFindResult, Path | None]:
    """The range test for a :class:`train.TrainConfig` (arch, dataset, batch size, size, device...)."""
    from rn_deploy.checkpoint import ModelConfig
    from rn_deploy.datasets.sources import load_dataset

    from .data import DeviceLoader
    from .distributed import pick_device

    dev = pick_device(cfg.device, 0)
    train_set, _ = load_dataset(cfg.dataset, cfg.data, presize=max(cfg.presize, cfg.size), workers=cfg.workers)
    train_set = train_set.subset(cfg.limit, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = ModelConfig(arch=cfg.arch, n_classes=len(train_set.class_names), in_channels=train_set.in_channels,
                        class_names=train_set.class_names, mean=train_set.mean, std=train_set.std).build().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=start, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    loader = DeviceLoader(train_set, cfg.batch_size, (cfg.size, cfg.size), dev, train=True, seed=cfg.seed)
    if len(loader) == 0:
        raise RnDeployError(f"batch size {cfg.batch_size} is larger than the {len(train_set)} training images")
    res = lr_find(model, opt, loader, start=start, end=end, iters=iters)
    png = plot_lr_find(res, Path(out) / "lr_find.png", f"{cfg.arch} on {cfg.dataset}") if out is not None else None
    return res, png

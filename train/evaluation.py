"""Evaluation during training: validation metrics summed across ranks, the saved model's eval record, its size range."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import DeviceLoader
from .progress import Log


def evaluate(model: nn.Module, loader: DeviceLoader, amp_dtype: torch.dtype | None) -> dict[str, float]:
    """Loss, accuracy and (with >= 5 classes) top-5 accuracy over a loader, summed across ranks.

    Under DDP pass the unwrapped model: ranks may hold different numbers of validation batches, and
    a DDP forward runs a collective (buffer broadcast) per call, which would then mismatch. Each rank
    first takes rank 0's buffers (BatchNorm statistics), so every shard is judged by the same model,
    the one rank 0 saves. ``val_images`` is the number of images counted over all ranks.
    """
    model.eval()
    dev = loader.device
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        with torch.no_grad():
            for b in model.buffers():
                dist.broadcast(b, src=0)
    tot = torch.zeros(4, device=dev, dtype=torch.float64)  # loss_sum, correct, correct5, n
    with torch.no_grad(), autocast(dev, amp_dtype):
        for x, y in loader:
            out = model(x).float()
            tot[0] += F.cross_entropy(out, y, reduction="sum")
            tot[1] += (out.argmax(1) == y).sum()
            if out.shape[1] >= 5:
                tot[2] += (out.topk(5, dim=1).indices == y[:, None]).any(1).sum()
            tot[3] += len(y)
    if distributed:
        dist.all_reduce(tot)
    n = max(tot[3].item(), 1)
    res = {"val_loss": tot[0].item() / n, "accuracy": tot[1].item() / n, "val_images": float(tot[3].item())}
    if loader.ds.class_names and len(loader.ds.class_names) >= 5:
        res["top5"] = tot[2].item() / n
    return res


def autocast(dev: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


def eval_record(cfg: TrainConfig, model: nn.Module, val_dl: DeviceLoader, metrics: dict[str, float],
                 amp_dtype: torch.dtype | None, last: bool) -> dict[str, Any]:
    """The saved model's evaluation, as ``rn-deploy eval`` reproduces it: which images, and its top-1.

    ``metrics`` came from this epoch's evaluation of the final weights on the whole validation
    subset (``val_set.subset(limit, seed)``). Under bf16 autocast or torch.compile the last epoch
    is evaluated once more, eager in FP32 (TF32 off), as ``eval``'s reference runs.
    """
    precision = "fp32"
    if amp_dtype is not None or cfg.compile:  # eager FP32, as the reference runs
        if last:
            tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            try:
                metrics = evaluate(model, val_dl, None)
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        elif amp_dtype is not None:
            precision = "bf16-autocast"
    n = len(val_dl.ds)
    return {"dataset": cfg.dataset, "data": cfg.data, "split": "val" if cfg.dataset == "imagefolder" else "test",
            "count": n, "limit": cfg.limit, "seed": cfg.seed, "image_size": list(val_dl.size), "top1": metrics["accuracy"],
            "correct": round(metrics["accuracy"] * n), "top5": metrics.get("top5"), "device": str(val_dl.device),
            "precision": precision}


def measure_sizes(cfg: TrainConfig, model: nn.Module, val_dl: DeviceLoader, record: dict[str, Any], say: Log) -> dict[str, Any]:
    """Top-1 of the final weights on the validation images resized to each of ``cfg.range_sizes``, and the range.

    The resize is :func:`rn_deploy.preprocess.fit` (what ``rn-deploy eval --sizes`` and every
    consumer do), eager FP32, so ``eval --sizes`` on the same images reproduces these numbers.
    """
    from rn_deploy.sizes import measure_range

    keep = val_dl.size
    top1: dict[int, float] = {}
    try:
        for side in cfg.range_sizes or []:
            val_dl.size = (side, side)
            top1[side] = evaluate(model, val_dl, None)["accuracy"]
    finally:
        val_dl.size = keep
    lo, hi = measure_range(top1, cfg.range_drop, prefer=cfg.size)
    say("size range: " + ", ".join(f"{s}px {100 * a:.2f}%" for s, a in top1.items())
        + f" -> {lo}-{hi} px (within {cfg.range_drop:g} pt of the best)")
    return {"sizes": list(top1), "top1": list(top1.values()), "drop_points": cfg.range_drop, "range": [lo, hi], "by": "train",
            "resampling": "rn_deploy.preprocess.fit (bilinear, antialiased)",
            **{k: record[k] for k in ("dataset", "data", "split", "count", "limit", "seed")}}

"""Training loop: one-cycle AdamW, AMP (bf16 on CUDA), channels_last, optional torch.compile, DDP.

``fit(TrainConfig(...))`` is the library entry point; ``rn-deploy train`` and ``python -m rn_deploy.train``
parse options into the same dataclass. Under ``torchrun`` (``WORLD_SIZE > 1``) it runs
DistributedDataParallel: NCCL on CUDA, gloo on CPU. Rank 0 alone prints and writes checkpoints.

This module composes the run (data, model, optimiser, epochs); its parts are :mod:`.config` (options),
:mod:`.distributed` (ranks, device, process group), :mod:`.schedule` (one-cycle), :mod:`.evaluation`
(validation metrics, eval record, size range), :mod:`.checkpoints` (resume), :mod:`.progress` and
:mod:`.result`; their public names stay importable from here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rn_deploy._io import check_writable
from rn_deploy.checkpoint import ModelConfig, save_checkpoint
from rn_deploy.datasets.sources import ImageSet, load_dataset
from rn_deploy.errors import RnDeployError
from rn_deploy.models import get_model_spec

from .checkpoints import finished_result, finished_run, resume, run_options
from .config import TrainConfig, parse_size_schedule
from .data import DeviceLoader
from .distributed import dist_info, init_distributed, pick_device
from .evaluation import autocast, eval_record, evaluate, measure_sizes
from .progress import Log, ProgressBar, plural
from .result import TrainingInterrupted, TrainResult
from .schedule import OneCycle

__all__ = ["Log", "OneCycle", "TrainConfig", "TrainResult", "TrainingInterrupted", "evaluate", "fit", "measure_sizes",
           "parse_size_schedule", "pick_device", "plural"]


def _mixup(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x), device=x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def fit(cfg: TrainConfig, log: Log | None = None, *, data: tuple[ImageSet, ImageSet] | None = None,
        progress: bool = True) -> TrainResult:
    """Train ``cfg.arch`` on ``cfg.dataset`` with a one-cycle schedule and write ``cfg.out/model.pt``.

    Args:
        cfg: the run's options.
        log: one-line messages (rank 0 only).
        data: pre-loaded (train, val) sets, instead of reading ``cfg.dataset``.
        progress: show a progress bar on stderr.
    """
    rank, local_rank, world = dist_info()
    say = (log or (lambda _s: None)) if rank == 0 else (lambda _s: None)
    dev = pick_device(cfg.device, local_rank)
    init_distributed(dev, world)
    saved: dict[str, Any] = {"epochs": 0, "checkpoint": None}  # updated by _fit after each checkpoint
    try:
        result = _fit(cfg, say, dev, rank, world, data, progress and rank == 0, saved)
        if world > 1:
            # Leave together: a rank that tears gloo down while rank 0 still writes the checkpoint aborts.
            dist.barrier()
        return result
    except KeyboardInterrupt:
        raise TrainingInterrupted(saved["checkpoint"], saved["epochs"], cfg.epochs) from None
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _fit(cfg: TrainConfig, say: Log, dev: torch.device, rank: int, world: int,
         data: tuple[ImageSet, ImageSet] | None, show: bool, saved: dict[str, Any]) -> TrainResult:
    get_model_spec(cfg.arch)  # unknown arch fails before the data loads
    # An unwritable output folder fails before any training; the folder itself appears with the first checkpoint.
    check_writable(cfg.out, folder=True, option="--out")
    if cfg.resume and (done := finished_run(Path(cfg.out) / "model.pt", cfg, dev, world)) is not None:
        saved.update(epochs=done.epochs, checkpoint=done.checkpoint)
        return done  # checked before the data loads: a finished run has nothing to do
    train_set, val_set = data or load_dataset(cfg.dataset, cfg.data, presize=max(cfg.presize, *cfg.epoch_sizes()),
                                                 workers=cfg.workers)
    train_set, val_set = train_set.subset(cfg.limit, cfg.seed), val_set.subset(cfg.limit, cfg.seed)
    say(f"data: {cfg.dataset} {len(train_set)} train / {len(val_set)} val images, {len(train_set.class_names)} classes, "
        f"device {dev}{f' x{world} (DDP)' if world > 1 else ''}")
    sizes = cfg.epoch_sizes()
    size = (sizes[0], sizes[0])
    use_cl = cfg.channels_last and dev.type == "cuda"
    train_dl = DeviceLoader(train_set, cfg.batch_size, size, dev, train=True, rank=rank, world=world, seed=cfg.seed, channels_last=use_cl,
                            multi_scale=cfg.multi_scale)
    val_dl = DeviceLoader(val_set, cfg.batch_size * 2, size, dev, train=False, rank=rank, world=world, channels_last=use_cl)
    if len(train_dl) == 0:
        raise RnDeployError(f"batch size {cfg.batch_size} x {world} process(es) is larger than the {len(train_set)} training images")

    torch.manual_seed(cfg.seed)
    config = ModelConfig(arch=cfg.arch, n_classes=len(train_set.class_names), in_channels=train_set.in_channels,
                         class_names=train_set.class_names, mean=train_set.mean, std=train_set.std, image_size=[cfg.size, cfg.size],
                         presize=val_set.presize)
    model = config.build().to(dev)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    steps = cfg.epochs * len(train_dl)  # the same on every rank: DeviceLoader gives each the same batch count
    sched = OneCycle(opt, cfg.lr, steps)
    ckpt_path = Path(cfg.out) / "model.pt"
    start_epoch, history = 0, list[dict[str, float]]()
    if cfg.resume:
        start_epoch, history = resume(ckpt_path, model, opt, sched, cfg)
        saved.update(epochs=start_epoch, checkpoint=str(ckpt_path))
        if start_epoch >= cfg.epochs:
            return finished_result(cfg, ckpt_path, history, dev, world, len(train_set), len(val_set))
        say(f"resume: {ckpt_path} after {plural(start_epoch, 'epoch')}")
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    amp_dtype = torch.bfloat16 if (cfg.amp and dev.type == "cuda") else None
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    t_start = time.perf_counter()
    train_imgs, train_time = 0, 0.0
    metrics: dict[str, float] = {}
    train_loss = float("nan")
    with ProgressBar(show) as bar:
        for epoch in range(start_epoch, cfg.epochs):
            net.train()
            train_dl.set_epoch(epoch)
            train_dl.size = val_dl.size = (sizes[epoch], sizes[epoch])
            task = bar.task(f"epoch {epoch + 1}/{cfg.epochs}", len(train_dl))
            loss_sum = torch.zeros((), device=dev)
            n_seen, shown, t0 = 0, 0, time.perf_counter()
            for i, (x, y) in enumerate(train_dl):
                with autocast(dev, amp_dtype):
                    if cfg.mixup > 0:
                        xm, ya, yb, lam = _mixup(x, y, cfg.mixup)
                        out = net(xm)
                        loss = lam * crit(out.float(), ya) + (1 - lam) * crit(out.float(), yb)
                    else:
                        loss = crit(net(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                opt.step()
                sched.step()
                loss_sum += loss.detach()
                n_seen += len(y)
                if show and (i % 20 == 19 or i == len(train_dl) - 1):
                    # .item() synchronises: only every 20 steps, and only for the display
                    el = time.perf_counter() - t0
                    bar.update(task, f"loss {loss_sum.item() / (i + 1):.4f}  {n_seen * world / max(el, 1e-9):,.0f} img/s",
                               advance=i + 1 - shown)
                    shown = i + 1
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            ep_time = time.perf_counter() - t0
            train_imgs += n_seen * world
            train_time += ep_time
            train_loss = loss_sum.item() / max(len(train_dl), 1)
            metrics = evaluate(model if world > 1 else net, val_dl, amp_dtype)
            row = {"epoch": epoch + 1, "size": sizes[epoch], "train_loss": train_loss, **metrics, "img_per_s": n_seen * world / ep_time,
                   "seconds": time.perf_counter() - t_start}
            history.append(row)
            record = eval_record(cfg, model, val_dl, metrics, amp_dtype, last=epoch + 1 == cfg.epochs)
            measured = None
            if cfg.range_sizes and epoch + 1 == cfg.epochs:
                measured = measure_sizes(cfg, model, val_dl, record, say)
                config.size_range = list(measured["range"])
            if rank == 0:
                train_meta = {"epochs": epoch + 1, "dataset": cfg.dataset, "n_train": len(train_set), "n_val": len(val_set), **metrics,
                              "train_loss": train_loss,
                              "history": history, "options": run_options(cfg), "eval": record}
                if measured:
                    train_meta["sizes"] = measured
                save_checkpoint(ckpt_path, model, config, train_meta,
                                resume={"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch + 1})
            saved.update(epochs=epoch + 1, checkpoint=str(ckpt_path))
            say(f"epoch {epoch + 1}/{cfg.epochs}" + (f" at {sizes[epoch]}px" if cfg.schedule else "")
                + f": train_loss {train_loss:.4f} val_loss {metrics['val_loss']:.4f} "
                f"accuracy {metrics['accuracy']:.4f}" + (f" top5 {metrics['top5']:.4f}" if "top5" in metrics else "")
                + f" ({row['img_per_s']:,.0f} img/s)")
    return TrainResult(
        checkpoint=str(ckpt_path), arch=cfg.arch, dataset=cfg.dataset, epochs=cfg.epochs,
        accuracy=metrics.get("accuracy", float("nan")), top5=metrics.get("top5"), val_loss=metrics.get("val_loss", float("nan")),
        train_loss=train_loss, images_per_second=train_imgs / train_time if train_time else 0.0,
        seconds=time.perf_counter() - t_start, device=str(dev), world_size=world, n_train=len(train_set), n_val=len(val_set),
        history=history,
    )

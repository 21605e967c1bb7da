"""Training loop: one-cycle AdamW, AMP (bf16 on CUDA), channels_last, optional torch.compile, DDP.

``fit(TrainConfig(...))`` is the library entry point; ``rn-deploy train`` and ``python -m rn_deploy.train``
parse options into the same dataclass. Under ``torchrun`` (``WORLD_SIZE > 1``) it runs
DistributedDataParallel: NCCL on CUDA, gloo on CPU. Rank 0 alone prints and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rn_deploy._io import check_writable
from rn_deploy.checkpoint import ModelConfig, read_checkpoint, save_checkpoint
from rn_deploy.datasets.sources import ImageSet, load_dataset
from rn_deploy.errors import CheckpointError, RnDeployError
from rn_deploy.models import get_model_spec
from rn_deploy.strictjson import ToDict

from .data import DeviceLoader

Log = Callable[[str], None]


@dataclass
class TrainConfig:
    """Options of one training run (the CLI's options, one to one).

    Attributes:
        arch: registered model name.
        dataset: ``fashion-mnist``, ``mnist`` or ``imagefolder`` (``mnist-png``, ``imagenette``: older names, recorded as these).
        data: dataset folder (None: the dataset's default, where it has one).
        epochs: total epochs (the sum of the phases when ``sizes`` is a schedule).
        batch_size: per-process batch size.
        lr: peak learning rate of the one-cycle schedule.
        size: training image size (H = W); with ``schedule`` the last phase's size.
        schedule: progressive resizing: ``[(size, epochs), ...]`` phases, run in order under one
            one-cycle schedule spanning all of them; ``epochs`` becomes their sum.
        presize: decode size for image folders (random crops of ``size`` are taken from it).
        device: ``cuda``, ``cpu`` or ``auto``.
        out: output folder; the checkpoint is ``out/model.pt``.
        limit: use at most this many training (and validation) images.
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        mixup: Beta(mixup, mixup) mixup alpha; 0 disables.
        amp: bf16 autocast on CUDA (ignored on CPU).
        channels_last: channels-last memory format (on CUDA).
        compile: wrap the model in ``torch.compile``.
        clip: gradient-norm clip; None disables.
        seed: seed for weights, order and augmentation.
        resume: continue from ``out/model.pt`` (same options) at the epoch after the last saved.
        workers: decode workers for image folders.
        multi_scale: size-robust training: ``(lo, hi)``: every training batch is resized to a random
            square side in lo..hi (after augmentation, as a deployer resizes); implies ``range_sizes``.
        range_sizes: measure top-1 on the validation images resized to these sizes after the last
            epoch and record the size range (within ``range_drop`` points of the best) in the
            checkpoint (``config.size_range``, ``train["sizes"]``). Default with ``multi_scale``:
            the training size times 0.75, 1, 1.5, 2 plus lo and hi.
        range_drop: top-1 points below the best size that still count as inside the range.
    """

    arch: str = "resnet18"
    dataset: str = "fashion-mnist"
    data: str | None = None
    epochs: int = 5
    batch_size: int = 256
    lr: float = 3e-3
    size: int = 28
    presize: int = 160
    device: str = "auto"
    out: str = "exports/model"
    limit: int | None = None
    weight_decay: float = 1e-2
    label_smoothing: float = 0.0
    mixup: float = 0.0
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    clip: float | None = None
    seed: int = 0
    resume: bool = False
    workers: int | None = None
    schedule: list[tuple[int, int]] | None = None
    multi_scale: tuple[int, int] | None = None
    range_sizes: list[int] | None = None
    range_drop: float = 1.0
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        from rn_deploy.datasets import ALIASES

        self.dataset = ALIASES.get(self.dataset, self.dataset)  # one name everywhere: the checkpoint records this one
        if self.size < 8:
            raise RnDeployError(f"--size {self.size}: images must be at least 8 pixels")
        if self.schedule:
            self.schedule = [(int(s), int(e)) for s, e in self.schedule]
            if any(s < 8 or e < 1 for s, e in self.schedule):
                raise RnDeployError(f"size schedule {self.schedule}: sizes must be >= 8 and epochs >= 1")
            self.epochs = sum(e for _, e in self.schedule)
            self.size = self.schedule[-1][0]
        if self.multi_scale:
            lo, hi = (int(v) for v in self.multi_scale)
            if not 8 <= lo <= hi:
                raise RnDeployError(f"--multi-scale {lo}:{hi}: need 8 <= LO <= HI pixels")
            self.multi_scale = (lo, hi)
            if not self.range_sizes:
                self.range_sizes = sorted({lo, hi, *(round(self.size * f) for f in (0.75, 1.0, 1.5, 2.0))})
        if self.range_sizes:
            if min(self.range_sizes) < 1:
                raise RnDeployError(f"--range-sizes {self.range_sizes}: sizes must be at least 1 pixel")
            self.range_sizes = sorted({int(v) for v in self.range_sizes})

    def epoch_sizes(self) -> list[int]:
        """The image size of each epoch."""
        return [s for s, e in (self.schedule or [(self.size, self.epochs)]) for _ in range(e)]


def parse_size_schedule(text: str) -> tuple[int, list[tuple[int, int]] | None]:
    """``'28'`` -> (28, None); ``'64:4,128:4,224:2'`` -> (224, [(64, 4), (128, 4), (224, 2)])."""
    try:
        if ":" not in text:
            return int(text), None
        phases = [(int(a), int(b)) for a, b in (p.split(":") for p in text.split(",") if p.strip())]
    except ValueError:
        raise RnDeployError(f"--size {text!r}: use N, or SIZE:EPOCHS phases like 64:4,128:4,224:2") from None
    if not phases:
        raise RnDeployError(f"--size {text!r}: no phases")
    return phases[-1][0], phases


@dataclass
class TrainResult(ToDict):
    checkpoint: str
    arch: str
    dataset: str
    epochs: int
    accuracy: float
    top5: float | None
    val_loss: float
    train_loss: float
    images_per_second: float
    seconds: float
    device: str
    world_size: int
    n_train: int
    n_val: int
    history: list[dict[str, float]]
    nothing_to_do: bool = False  # --resume of a run that had already trained every epoch


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: how far the run got and where its last checkpoint is.

    Attributes:
        checkpoint: the checkpoint written by this run's last finished epoch (or the resumed
            one), None if no epoch finished.
        epochs_done: epochs in that checkpoint.
        epochs: the run's total.
    """

    def __init__(self, checkpoint: str | None, epochs_done: int, epochs: int):
        super().__init__(f"interrupted after {epochs_done}/{epochs} epochs")
        self.checkpoint, self.epochs_done, self.epochs = checkpoint, epochs_done, epochs


def _dist_info() -> tuple[int, int, int]:
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
    with torch.no_grad(), _autocast(dev, amp_dtype):
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


def _autocast(dev: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


def _mixup(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x), device=x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


class _Progress:
    """A rich progress bar on stderr (rank 0), or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=Console(stderr=True),
                                transient=False)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def task(self, desc: str, total: int) -> Any:
        return self.bar.add_task(desc, total=total, stats="") if self.bar else None

    def update(self, task: Any, stats: str, advance: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(task, advance=advance, stats=stats)


def fit(cfg: TrainConfig, log: Log | None = None, *, data: tuple[ImageSet, ImageSet] | None = None,
        progress: bool = True) -> TrainResult:
    """Train ``cfg.arch`` on ``cfg.dataset`` with a one-cycle schedule and write ``cfg.out/model.pt``.

    Args:
        cfg: the run's options.
        log: one-line messages (rank 0 only).
        data: pre-loaded (train, val) sets, instead of reading ``cfg.dataset``.
        progress: show a progress bar on stderr.
    """
    rank, local_rank, world = _dist_info()
    say = (log or (lambda _s: None)) if rank == 0 else (lambda _s: None)
    dev = pick_device(cfg.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
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
    if cfg.resume and (done := _finished_run(Path(cfg.out) / "model.pt", cfg, dev, world)) is not None:
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
        start_epoch, history = _resume(ckpt_path, model, opt, sched, cfg)
        saved.update(epochs=start_epoch, checkpoint=str(ckpt_path))
        if start_epoch >= cfg.epochs:
            return _finished_result(cfg, ckpt_path, history, dev, world, len(train_set), len(val_set))
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
    with _Progress(show) as bar:
        for epoch in range(start_epoch, cfg.epochs):
            net.train()
            train_dl.set_epoch(epoch)
            train_dl.size = val_dl.size = (sizes[epoch], sizes[epoch])
            task = bar.task(f"epoch {epoch + 1}/{cfg.epochs}", len(train_dl))
            loss_sum = torch.zeros((), device=dev)
            n_seen, shown, t0 = 0, 0, time.perf_counter()
            for i, (x, y) in enumerate(train_dl):
                with _autocast(dev, amp_dtype):
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
            record = _eval_record(cfg, model, val_dl, metrics, amp_dtype, last=epoch + 1 == cfg.epochs)
            measured = None
            if cfg.range_sizes and epoch + 1 == cfg.epochs:
                measured = measure_sizes(cfg, model, val_dl, record, say)
                config.size_range = list(measured["range"])
            if rank == 0:
                train_meta = {"epochs": epoch + 1, "dataset": cfg.dataset, "n_train": len(train_set), "n_val": len(val_set), **metrics,
                              "train_loss": train_loss,
                              "history": history, "options": _options(cfg), "eval": record}
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


def _eval_record(cfg: TrainConfig, model: nn.Module, val_dl: DeviceLoader, metrics: dict[str, float],
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


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``4 epochs``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _finished_result(cfg: TrainConfig, ckpt_path: Path, history: list[dict[str, float]], dev: torch.device, world: int,
                     n_train: int, n_val: int) -> TrainResult:
    """The result of resuming a run that had already trained every epoch: its last epoch's metrics, nothing new."""
    last = history[-1] if history else {}
    return TrainResult(
        checkpoint=str(ckpt_path), arch=cfg.arch, dataset=cfg.dataset, epochs=cfg.epochs,
        accuracy=last.get("accuracy", float("nan")), top5=last.get("top5"), val_loss=last.get("val_loss", float("nan")),
        train_loss=last.get("train_loss", float("nan")), images_per_second=0.0, seconds=0.0, device=str(dev), world_size=world,
        n_train=n_train, n_val=n_val, history=history, nothing_to_do=True,
    )


def _options(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("history", None)
    return d


def _resume_state(path: Path, cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
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


def _finished_run(path: Path, cfg: TrainConfig, dev: torch.device, world: int) -> TrainResult | None:
    """``--resume`` of a run that already trained every epoch, answered from its checkpoint alone (no data load).

    None when there is more to train, or the checkpoint predates the recorded image counts (the data then tells them).
    """
    if not path.exists():
        return None
    raw, state = _resume_state(path, cfg)
    train = raw.get("train") or {}
    if int(state["epoch"]) < cfg.epochs or "n_train" not in train or "n_val" not in train:
        return None
    return _finished_result(cfg, path, list(train.get("history", [])), dev, world, int(train["n_train"]), int(train["n_val"]))


def _resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: OneCycle, cfg: TrainConfig) -> tuple[int, list[dict[str, float]]]:
    raw, state = _resume_state(path, cfg)
    model.load_state_dict(raw["state_dict"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["epoch"]), list(raw["train"].get("history", []))


class OneCycle:
    """fastai's ``fit_one_cycle``: LR cosine up from lr/25 over 25% of steps, then cosine down to lr/25e5,
    with Adam's beta1 cycled 0.95 -> 0.85 -> 0.95 the opposite way. Valid for any number of steps.
    """

    def __init__(self, opt: torch.optim.Optimizer, lr_max: float, total: int, pct_start: float = 0.25):
        self.opt, self.lr_max, self.total, self.warm = opt, lr_max, max(total, 1), pct_start * max(total, 1)
        self.step_num = 0
        self._apply()

    @staticmethod
    def _cos(a: float, b: float, p: float) -> float:
        return b + (a - b) * (1 + math.cos(math.pi * min(max(p, 0.0), 1.0))) / 2

    def values(self, step: int) -> tuple[float, float]:
        if step < self.warm:
            p = step / self.warm
            return self._cos(self.lr_max / 25, self.lr_max, p), self._cos(0.95, 0.85, p)
        p = (step - self.warm) / max(self.total - self.warm, 1)
        return self._cos(self.lr_max, self.lr_max / 25 / 1e5, p), self._cos(0.85, 0.95, p)

    def _apply(self) -> None:
        lr, beta1 = self.values(self.step_num)
        for g in self.opt.param_groups:
            g["lr"] = lr
            if "betas" in g:
                g["betas"] = (beta1, g["betas"][1])

    def step(self) -> None:
        self.step_num += 1
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"step_num": self.step_num}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_num = int(state["step_num"])
        self._apply()


"""The prediction pass: one runner over one dataset split, in batches, keeping the top-5 classes per image.

:func:`predict_split` preprocesses each slice of the uint8 split with :func:`rn_deploy.preprocess.eval_batch` (the
function training evaluation uses) and returns :class:`SplitPredictions`; :func:`check_data_fits` refuses data the
model cannot judge, in one line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..checkpoint import ModelConfig
from ..datasets.sources import ImageSet
from ..errors import DataError, RnDeployError
from ..log import Log
from ..preprocess import eval_batch


@dataclass
class SplitPredictions:
    """What one runner predicted on one split.

    Attributes:
        name: the runner's name (e.g. ``ort-cpu-fp32``).
        top1: arg-max class per image, ``(N,)`` int64.
        top5: the ``min(5, n_classes)`` best classes per image, best first, ``(N, k)`` int64.
        labels: true class per image, ``(N,)`` int64.
        index: each image's position in the full split (``(N,)``), so disagreements can be found.
        seconds: wall time of the whole pass (preprocessing, transfer, inference).
        images_per_s: ``N / seconds``.
        nonfinite: images whose logits had NaN or Inf.
        batch: the batch size used (smaller than asked when an engine's profiles cap it).
    """

    name: str
    top1: np.ndarray
    top5: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    seconds: float
    images_per_s: float
    nonfinite: int = 0
    batch: int = 0

    def __len__(self) -> int:
        return len(self.labels)


def check_data_fits(images: ImageSet, config: ModelConfig, where: str = "data") -> None:
    """Raise a one-line :class:`DataError` when the images cannot be judged by this model."""
    if images.in_channels != config.in_channels:
        raise DataError(f"{where}: images have {images.in_channels} channel(s), the model takes {config.in_channels}; "
                        "evaluate on the dataset the model was trained on")
    n_data = len(images.class_names)
    if n_data != config.n_classes:
        raise DataError(f"{where}: {n_data} classes in the data, the model has {config.n_classes} outputs; "
                        "evaluate on the dataset the model was trained on")
    if not default_names(config) and list(images.class_names) != config.class_names:
        diff = next(i for i, (a, b) in enumerate(zip(images.class_names, config.class_names, strict=True)) if a != b)
        raise DataError(f"{where}: class {diff} is {images.class_names[diff]!r} in the data but {config.class_names[diff]!r} "
                        "in the model; evaluate on the dataset the model was trained on")


def load_judged_split(dataset: str, data: Any, split: str, config: ModelConfig, *, limit: int | None = None, seed: int = 0,
                      where: str | None = None) -> ImageSet:
    """The images a verdict judges (eval, eval --sizes, quantize's gate), decoded the one way, checked to fit the model.

    The same ``dataset``/``data``/``split``/``limit``/``seed`` give the same images with the same preprocessing whoever
    asks, so an artifact passing quantize's gate is judged by eval on exactly those images.
    """
    from ..datasets.sources import load_split

    images = load_split(dataset, data, split, limit=limit, seed=seed, presize=config.presize or max(config.image_size),
                        channels=config.in_channels,
                        class_names=config.class_names if dataset == "imagefolder" and not default_names(config) else None)
    check_data_fits(images, config, where or str(data or dataset))
    return images


def default_names(config: ModelConfig) -> bool:
    """Class names "0", "1", ...: the model does not know its classes (an import), so any data's names fit."""
    return config.class_names == [str(i) for i in range(config.n_classes)]


def _fit_batch(runner: Any, batch: int, shape: tuple[int, int, int]) -> int:
    """The largest batch <= ``batch`` whose shape the runner covers (engines: their profiles)."""
    covers = getattr(runner, "covers", None)
    if covers is None:
        return batch
    b = batch
    while b >= 1:
        if covers((b, *shape)) is None:
            return b
        b //= 2
    raise RnDeployError(f"{getattr(runner, 'name', 'runner')}: {covers((1, *shape))}; rebuild it with a profile that "
                        f"covers {shape[1]}x{shape[2]} (the model's image size)")


class _Bar:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, desc: str, total: int):
        self.bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task(desc, total=total, stats="")

    def update(self, n: int, stats: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, stats=stats)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def predict_split(runner: Any, images: ImageSet, config: ModelConfig, *, batch: int = 256, log: Log | None = None,
                  progress: bool = True) -> SplitPredictions:
    """Run every image of ``images`` through ``runner`` in batches and keep the top-5 classes.

    Each batch is a slice of the uint8 images, preprocessed by :func:`rn_deploy.preprocess.eval_batch`
    at ``config.image_size`` with ``config.mean``/``config.std`` (what training evaluation does), then
    ``runner.prepare`` / ``runner.infer`` / ``runner.sync``. Only ``(N, 5)`` indices are kept, so
    memory does not grow with the number of classes.

    Args:
        runner: a :mod:`rn_deploy.runners` runner (entered or not; it is used as is).
        images: the split (see :func:`load_split`).
        config: the model's config (image size, normalisation, channels, classes).
        batch: images per batch (capped by an engine's profiles).
        log: one-line messages (the final speed).
        progress: show a progress bar on stderr.
    """
    if batch < 1:
        raise RnDeployError(f"--batch {batch}: must be at least 1")
    check_data_fits(images, config)
    n = len(images)
    name = str(getattr(runner, "name", type(runner).__name__))
    h, w = config.image_size
    b = _fit_batch(runner, batch, (config.in_channels, h, w))
    k = min(5, config.n_classes)
    top1 = np.empty(n, dtype=np.int64)
    top5 = np.empty((n, k), dtype=np.int64)
    nonfinite = 0
    bar = _Bar(progress and n > 0, f"eval {name}", n)
    t0 = time.perf_counter()
    try:
        for start in range(0, n, b):
            x = eval_batch(images.images[start : start + b], (h, w), config.mean, config.std)
            out = runner.infer(runner.prepare(x))
            runner.sync()
            out = out.float()
            bad = ~torch.isfinite(out).all(dim=1)
            nonfinite += int(bad.sum())
            # NaN rows would otherwise arg-max to an arbitrary class: count them as wrong (-1).
            idx = out.nan_to_num(nan=-float("inf")).topk(k, dim=1).indices
            idx[bad] = -1
            idx = idx.cpu().numpy()
            top5[start : start + len(idx)] = idx
            top1[start : start + len(idx)] = idx[:, 0]
            done = start + len(idx)
            bar.update(len(idx), f"{done / max(time.perf_counter() - t0, 1e-9):,.0f} img/s")
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    pred = SplitPredictions(name=name, top1=top1, top5=top5, labels=images.labels.numpy().astype(np.int64),
                            index=(images.index.numpy() if images.index is not None else np.arange(n)).astype(np.int64),
                            seconds=seconds, images_per_s=n / seconds if seconds > 0 else 0.0, nonfinite=nonfinite, batch=b)
    if log:
        log(f"eval {name}: {n} images in {seconds:.1f}s ({pred.images_per_s:,.0f} img/s, batch {b})")
    return pred

"""Accuracy on real data for every artifact: the checkpoint, its ONNX files and engines.

The library half of ``rn-deploy eval``:

- :func:`load_split` reads a dataset split as a :class:`train.data.ImageSet` through the same
  readers and the same ``ImageSet.subset(limit, seed)`` as training, so ``--limit N --seed S``
  selects exactly the images ``train --limit N --seed S`` evaluated on;
- :func:`predict_split` streams that split through any runner (PyTorch, ONNX Runtime, TensorRT)
  in batches, preprocessed by :func:`rn_deploy.preprocess.eval_batch` (the function training
  evaluation uses), and keeps only top-5 indices per image;
- :func:`accuracy`, :func:`agreement` and :func:`confusion` turn predictions into numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint import ModelConfig
from .errors import DataError, RnDeployError
from .preprocess import eval_batch

if TYPE_CHECKING:
    from train.data import ImageSet

Log = Callable[[str], None]
DATASET_CHOICES = ("fashion-mnist", "mnist", "imagefolder")
_ALIASES = {"mnist-png": "mnist", "imagenette": "imagefolder"}


def canonical_dataset(name: str) -> str:
    """``mnist-png`` -> ``mnist``, ``imagenette`` -> ``imagefolder``; unknown names are an error."""
    name = _ALIASES.get(name, name)
    if name not in DATASET_CHOICES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_CHOICES)}")
    return name


def default_split(dataset: str) -> str:
    """The split training evaluates on: ``test`` for Fashion-MNIST / MNIST, ``val`` for image folders."""
    return "val" if canonical_dataset(dataset) == "imagefolder" else "test"


def load_split(dataset: str, data: str | Path | None, split: str, *, limit: int | None = None, seed: int = 0,
               presize: int | None = None, channels: int = 3, class_names: Sequence[str] | None = None) -> ImageSet:
    """One split of a dataset as decoded uint8 images, optionally the ``limit``/``seed`` subset training used.

    Args:
        dataset: ``fashion-mnist``, ``mnist`` (the MNIST PNG folder layout) or ``imagefolder``.
        data: dataset folder (None: Fashion-MNIST's default location; required for the others).
        split: ``train``, ``test`` or ``val``. Fashion-MNIST and MNIST have one held-out split
            (``test``; ``val`` names the same one); for image folders it is the folder ``ROOT/<split>``.
        limit: at most this many images, chosen by ``ImageSet.subset(limit, seed)`` as ``train --limit`` does.
        seed: the subset's seed (training's ``--seed``, default 0).
        presize: image folders: the decode size (the checkpoint's ``config.presize``).
        channels: image folders: decode as 1 (L) or 3 (RGB) channels.
        class_names: image folders: the classes the split must have (e.g. the model's).

    Raises:
        DataError: missing folder or files, empty folder, unknown dataset or split, nothing selected.
    """
    from train.data import load_fashion_mnist, load_image_folder, load_mnist_png

    name = canonical_dataset(dataset)
    if split not in ("train", "test", "val"):
        raise DataError(f"unknown split {split!r}; choose train, test or val")
    if limit is not None and limit < 1:
        raise DataError(f"--limit {limit}: must be at least 1")
    if name == "fashion-mnist":
        full = load_fashion_mnist(data, "train" if split == "train" else "test")
    elif data is None:
        raise DataError(f"dataset {name!r} needs --data DIR")
    elif name == "mnist":
        full = load_mnist_png(data, "train" if split == "train" else "test")
    else:
        if presize is None:
            raise DataError(f"{data}: image folders need a decode size (presize); the checkpoint's config.presize is None")
        full = load_image_folder(data, split, presize=presize, channels=channels,
                                 class_names=list(class_names) if class_names else None)
    if len(full) == 0:
        raise DataError(f"{data or name}: the {split} split has no images")
    return full.subset(limit, seed)


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
    default_names = [str(i) for i in range(config.n_classes)]
    if config.class_names != default_names and list(images.class_names) != config.class_names:
        diff = next(i for i, (a, b) in enumerate(zip(images.class_names, config.class_names, strict=True)) if a != b)
        raise DataError(f"{where}: class {diff} is {images.class_names[diff]!r} in the data but {config.class_names[diff]!r} "
                        "in the model; evaluate on the dataset the model was trained on")


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


def _n_and_names(n_classes: int | Sequence[str]) -> tuple[int, list[str]]:
    if isinstance(n_classes, int):
        return n_classes, [str(i) for i in range(n_classes)]
    names = [str(c) for c in n_classes]
    return len(names), names


def accuracy(pred: SplitPredictions, n_classes: int | Sequence[str]) -> dict[str, Any]:
    """Top-1, top-5 (None with <= 5 classes) and per-class top-1 of ``pred``, as fractions in [0, 1].

    Returns:
        ``{"count", "correct", "top1", "top5", "per_class": [{"class", "count", "correct", "top1"}]}``;
        a class with no images has ``top1`` None. ``correct`` is exact, for comparisons that must be.
    """
    n, names = _n_and_names(n_classes)
    count = len(pred)
    hit = pred.top1 == pred.labels
    correct = int(hit.sum())
    top5 = None
    if n > 5:
        top5 = float((pred.top5 == pred.labels[:, None]).any(axis=1).mean()) if count else 0.0
    per_class = []
    for c in range(n):
        sel = pred.labels == c
        cnt, cor = int(sel.sum()), int(hit[sel].sum())
        per_class.append({"class": names[c], "count": cnt, "correct": cor, "top1": cor / cnt if cnt else None})
    return {"count": count, "correct": correct, "top1": correct / count if count else 0.0, "top5": top5, "per_class": per_class}


def agreement(pred: SplitPredictions, ref: SplitPredictions) -> tuple[float, np.ndarray]:
    """Fraction of images where ``pred`` and ``ref`` have the same top-1, and the split indices where they differ."""
    if len(pred) != len(ref) or not np.array_equal(pred.index, ref.index):
        raise RnDeployError(f"{pred.name} and {ref.name} were run on different images; cannot compare them")
    differ = pred.top1 != ref.top1
    frac = 1.0 - float(differ.mean()) if len(pred) else 1.0
    return frac, pred.index[differ]


def confusion(pred: SplitPredictions, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts, rows = true class, columns = predicted (NaN predictions are dropped)."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    ok = pred.top1 >= 0
    np.add.at(m, (pred.labels[ok], pred.top1[ok]), 1)
    return m

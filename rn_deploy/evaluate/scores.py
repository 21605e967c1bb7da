"""The numbers of a prediction pass: top-1/top-5/per-class accuracy, agreement with the reference, the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import RnDeployError
from .predict import SplitPredictions


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


def lost_images(pred: SplitPredictions, ref: SplitPredictions) -> int:
    """Images ``ref`` gets right and ``pred`` gets wrong (what a net top-1 drop of 0 can hide behind lucky gains)."""
    agreement(pred, ref)  # the same images, or a one-line refusal
    return int(((ref.top1 == ref.labels) & (pred.top1 != pred.labels)).sum())


def confusion(pred: SplitPredictions, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts, rows = true class, columns = predicted (NaN predictions are dropped)."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    ok = pred.top1 >= 0
    np.add.at(m, (pred.labels[ok], pred.top1[ok]), 1)
    return m

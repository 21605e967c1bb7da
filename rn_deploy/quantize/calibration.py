"""Calibration data: the dataset that calibrates and gates a model (the one it trained on), its images as the quantizers take them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .form import QuantizeError


def calib_dataset(source: Path, asked: str | None, recorded: str | None) -> str:
    """The calibration/gate dataset: the recorded one by default; another one asked for is refused by name."""
    from ..datasets import canonical_dataset

    if asked is None:
        if recorded is None:
            raise QuantizeError(f"{source}: records no training dataset; pass --calib fashion-mnist|mnist|imagefolder")
        return canonical_dataset(recorded)
    asked = canonical_dataset(asked)
    if recorded is not None and canonical_dataset(recorded) != asked:
        raise QuantizeError(f"{source}: trained on {canonical_dataset(recorded)}, not {asked}: calibrating and gating on another "
                            f"dataset says nothing about this model; omit --calib (or pass --calib {canonical_dataset(recorded)})")
    return asked


def calibration_array(pool: Any, n: int, cfg: Any, seed: int = 0) -> np.ndarray:
    """``n`` training images of ``pool`` preprocessed as the model sees them (float32 NCHW)."""
    from ..preprocess import eval_batch

    sub = pool.subset(n, seed)
    return eval_batch(sub.images, cfg.image_size, cfg.mean, cfg.std).numpy().astype(np.float32)

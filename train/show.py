"""``show-batch``: a grid of augmented training images with their labels, to check the pipeline by eye."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rn_deploy._io import atomic_path
from rn_deploy.datasets.sources import ImageSet

from .data import DeviceLoader

CELL_PX = 160  # each grid cell is CELL_PX x CELL_PX pixels in the PNG


def show_batch(ds: ImageSet, path: str | Path, *, n: int = 9, size: int = 28, seed: int = 0) -> tuple[int, int]:
    """Write ``n`` augmented, denormalised images with labels as a grid PNG; return (rows, cols)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(ds))
    loader = DeviceLoader(ds, n, (size, size), torch.device("cpu"), train=True, seed=seed)
    x, y = next(iter(loader))
    c = ds.in_channels
    mean = torch.tensor(ds.mean).view(1, c, 1, 1)
    std = torch.tensor(ds.std).view(1, c, 1, 1)
    imgs = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    dpi = 80
    fig, axes = plt.subplots(rows, cols, figsize=(cols * CELL_PX / dpi, rows * CELL_PX / dpi), dpi=dpi, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = imgs[i].permute(1, 2, 0).numpy()
            ax.imshow(img[:, :, 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=255)
            ax.set_title(ds.class_names[int(y[i])], fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return rows, cols

"""Training batches on the device: an :class:`ImageSet` moved to the device once, then indexed, augmented and normalised there.

The loader indexes, augments and normalises whole batches on the device (``affine_grid`` + ``grid_sample``),
so on a GPU the model never waits for Python workers. The datasets themselves are :mod:`rn_deploy.datasets`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from rn_deploy.datasets.sources import Augment, ImageSet
from rn_deploy.preprocess import eval_batch, fit, normalize

# --------------------------------------------------------------------------------------------
# Batches on the device
# --------------------------------------------------------------------------------------------


def augment_batch(x: torch.Tensor, size: tuple[int, int], aug: Augment, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random resized crop / translation / flip of a float batch in one ``grid_sample``.

    ``x`` is ``(B, C, H, W)`` float on any device; the result is ``(B, C, *size)``.
    """
    b, _, h, w = x.shape
    dev = x.device
    # One random draw for every per-image parameter: few kernel launches, no host round trips.
    r = torch.rand(b, 7, generator=gen, device=gen.device if gen is not None else dev).to(dev)
    one = torch.ones(b, device=dev)
    sx, sy = one, one
    if aug.min_scale < 1.0:
        area = aug.min_scale + (1 - aug.min_scale) * r[:, 0]
        ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r[:, 1])
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sx) * (2 * r[:, 2] - 1)
    ty = (1 - sy) * (2 * r[:, 3] - 1)
    if aug.pad:
        # whole-pixel shifts in [-pad, pad], in normalised coordinates of the output grid
        tx = tx + torch.round((2 * r[:, 4] - 1) * aug.pad) * 2 / size[1]
        ty = ty + torch.round((2 * r[:, 5] - 1) * aug.pad) * 2 / size[0]
    if aug.flip:
        sx = torch.where(r[:, 6] < 0.5, -sx, sx)
    zero = torch.zeros(b, device=dev)
    theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
    grid = F.affine_grid(theta, [b, x.shape[1], size[0], size[1]], align_corners=False)
    mode = "nearest" if (aug.min_scale >= 1.0 and (h, w) == tuple(size)) else "bilinear"
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


class DeviceLoader:
    """Iterates normalised float batches of an :class:`ImageSet` held on ``device``.

    Args:
        ds: the images.
        batch_size: per-process batch size.
        size: output (H, W).
        device: where images live and batches are made.
        train: shuffle, drop the last partial batch and augment.
        rank, world: this process's shard under DDP. Training: every ``world``-th batch, and every rank the
            same number of batches (the last ``n_batches % world`` of each shuffled epoch are dropped), so
            DDP's collectives line up. Evaluation: every ``world``-th batch of the whole set in order, so
            the ranks together see each image exactly once (their batch counts may differ by one).
        seed: base seed; the order for epoch ``e`` uses ``seed + e`` on every rank.
        channels_last: return channels-last memory format.
        multi_scale: training: ``(lo, hi)``: each augmented batch is then resized (the deployer's
            resize, :func:`rn_deploy.preprocess.fit`) to a square side drawn uniformly from lo..hi.
    """

    def __init__(self, ds: ImageSet, batch_size: int, size: tuple[int, int], device: torch.device, *, train: bool,
                 rank: int = 0, world: int = 1, seed: int = 0, channels_last: bool = False,
                 multi_scale: tuple[int, int] | None = None):
        self.ds, self.bs, self.size, self.device, self.train = ds, batch_size, size, device, train
        self.rank, self.world, self.seed, self.channels_last = rank, world, seed, channels_last
        self.multi_scale = multi_scale
        self.images = ds.images.to(device, non_blocking=True)
        self.labels = ds.labels.to(device, non_blocking=True)
        self.epoch = 0

    def _n_batches(self) -> int:
        """Batches of the whole set this loader walks (training: a multiple of ``world``)."""
        if self.train:
            return len(self.ds) // self.bs // self.world * self.world
        return math.ceil(len(self.ds) / self.bs)

    def __len__(self) -> int:
        return max(0, (self._n_batches() - self.rank + self.world - 1) // self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.ds)
        if self.train:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).to(self.device)
            aug_gen = torch.Generator(device=self.device).manual_seed(self.seed * 1000 + self.epoch * 10 + self.rank)
            size_gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch * 10 + self.rank + 7)
        else:
            order = torch.arange(n, device=self.device)
            aug_gen = None
        for i in range(self.rank, self._n_batches(), self.world):
            idx = order[i * self.bs : (i + 1) * self.bs]
            x = self.images.index_select(0, idx)
            if self.train:
                x = augment_batch(x.float(), self.size, self.ds.augment, aug_gen)
                if self.multi_scale:  # size-robust training: the batch at a random size, resized as a deployer would
                    side = int(torch.randint(self.multi_scale[0], self.multi_scale[1] + 1, (1,), generator=size_gen))
                    x = fit(x, (side, side))
                x = normalize(x, self.ds.mean, self.ds.std)
            else:  # evaluation: exactly what Engine, validate, eval and serve do (rn_deploy.preprocess)
                x = eval_batch(x, self.size, self.ds.mean, self.ds.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx)

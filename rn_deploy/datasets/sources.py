"""Dataset readers: Fashion-MNIST IDX files and image folders, decoded once into uint8 :class:`ImageSet` tensors.

Every dataset becomes an :class:`ImageSet`: a ``uint8`` tensor ``(N, C, H, W)`` plus labels, the
normalisation and the augmentation that suits it (applied by training's batch loader,
:mod:`rn_deploy.train.data`). Decoding JPEG/PNG folders is the only CPU-heavy step: it runs once, in a
DataLoader with worker processes, and its result is cached as ``.npy`` (memory-mapped) next to the data.

Layouts:
- ``fashion-mnist``: IDX files (``train-images-idx3-ubyte.gz`` ...), default
  ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
- ``mnist`` (formerly ``mnist-png``): ``ROOT/training/<digit>/*.png`` and ``ROOT/testing/<digit>/*.png``.
- ``imagefolder`` (Imagenette): ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*``; the
  split is the grandparent folder, the label the parent folder.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path
from ..errors import DataError
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, convert_pil, fit_uint8
from .names import canonical_dataset

FASHION_MNIST_DIR = Path(os.environ.get("RN_DEPLOY_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass
class Augment:
    """Batch augmentation applied on the device.

    Attributes:
        pad: random translation of up to ``pad`` pixels with zero fill (the seed's ``rand_pad``).
        min_scale: random-resized-crop area scale lower bound; 1.0 disables it.
        flip: random horizontal flip.
    """

    pad: int = 0
    min_scale: float = 1.0
    flip: bool = False


@dataclass
class ImageSet:
    """Decoded images (uint8, NCHW) with labels and what is needed to normalise them."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    mean: list[float]
    std: list[float]
    augment: Augment = field(default_factory=Augment)
    skipped: int = 0
    presize: int | None = None
    index: torch.Tensor | None = None  # positions in the full split (set by subset; None: all, in order)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, n: int | None, seed: int = 0) -> ImageSet:
        """A class-balanced-ish random subset of ``n`` items (all if None or larger)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return ImageSet(self.images[idx], self.labels[idx], self.class_names, self.mean, self.std, self.augment, self.skipped,
                        self.presize, idx if self.index is None else self.index[idx])


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if data[2] != 0x08 or len(data) != expected:
        raise DataError(f"{path}: IDX file is truncated or not uint8 ({len(data)} bytes, expected {expected})")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise DataError(f"{root}: no {stem}[.gz]; expected Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")


def load_fashion_mnist(root: str | Path | None, split: str) -> ImageSet:
    root = Path(root) if root else FASHION_MNIST_DIR
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; install Debian's dataset-fashion-mnist or pass --data DIR")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} {prefix} images but {len(labels)} labels")
    return ImageSet(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), list(FASHION_CLASSES),
        [0.2860], [0.3530], Augment(pad=3, flip=True),
    )


def _class_folders(split_dir: Path) -> list[Path]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: no such folder; expected ROOT/{split_dir.name}/<class>/<images>")
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir}: no class folders inside")
    for c in classes:
        if not any(f.suffix.lower() in IMAGE_EXTS for f in c.iterdir()):
            raise DataError(f"{c}: class folder has no images")
    return classes


# Where the class names a split is checked against come from: the other split (training) or the model (eval, quantize).
TRAINING_SPLIT = "the training split's class folders"
MODEL_CLASSES = "the model's class names (config.class_names)"


def _list_split(root: Path, split: str, class_names: list[str] | None, names_of: str = TRAINING_SPLIT
                ) -> tuple[list[Path], list[int], list[str]]:
    folders = _class_folders(root / split)
    names = [p.name for p in folders]
    if class_names is not None and names != class_names:
        only_here = sorted(set(names) - set(class_names))
        only_there = sorted(set(class_names) - set(names))
        fix = "both splits need the same classes" if names_of == TRAINING_SPLIT else "the folder needs one class folder per model class, named as the model's"
        raise DataError(f"{root / split}: class folders differ from {names_of} (only here: {only_here}, "
                        f"missing: {only_there}); {fix}")
    files, labels = [], []
    for i, folder in enumerate(folders):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                files.append(f)
                labels.append(i)
    return files, labels, names


class _DecodeDataset(torch.utils.data.Dataset[tuple[torch.Tensor, bool]]):
    """Decodes one image to ``(C, size, size)`` uint8: resize the short side, centre crop (rn_deploy.preprocess)."""

    def __init__(self, files: list[Path], size: int, channels: int):
        self.files, self.size, self.channels = files, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as src:
                arr = np.asarray(convert_pil(src, self.channels), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), False
        if arr.ndim == 2:
            arr = arr[:, :, None]
        # The serving path (rn_deploy.preprocess) applies this same decode step when ModelConfig.presize is set.
        return fit_uint8(arr, self.size), True


def _decode_into(files: list[Path], size: int, channels: int, workers: int, dest: np.ndarray) -> np.ndarray:
    """Decode ``files`` into ``dest`` (N, C, size, size) uint8, 64 at a time; return which decoded."""
    ok = np.zeros(len(files), dtype=bool)
    loader = torch.utils.data.DataLoader(_DecodeDataset(files, size, channels), batch_size=64, num_workers=workers)
    i = 0
    for imgs, good in loader:
        dest[i : i + len(imgs)] = imgs.numpy()
        ok[i : i + len(imgs)] = good.numpy()
        i += len(imgs)
    return ok


def _cache_path(root: Path, split: str, files: list[Path], size: int, channels: int) -> Path:
    # "fit1": the decode policy of rn_deploy.preprocess; a cache written by another policy is not reused.
    key = hashlib.sha1(("fit1\n" + "\n".join(f"{f}:{f.stat().st_size}" for f in files)).encode()).hexdigest()[:12]
    return root / ".rn-deploy-cache" / f"{split}-{size}px-{channels}ch-{key}.npy"


def _decode_cached(files: list[Path], size: int, channels: int, workers: int, cpath: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images and their ok-mask, from the cache or decoded now (into the cache when it can be written).

    The cache is a plain ``.npy`` opened memory-mapped (copy-on-write), so a split larger than
    memory is read page by page as batches need it; ``<cache>.ok.npy`` marks unreadable files.
    """
    shape = (len(files), channels, size, size)
    okpath = cpath.with_name(cpath.name + ".ok.npy") if cpath else None
    if cpath and okpath and cpath.exists() and okpath.exists():
        return np.load(cpath, mmap_mode="c"), np.load(okpath)
    if cpath and okpath:
        tmp = cpath.with_name(f".{cpath.name}.{os.getpid()}.tmp")
        try:
            cpath.parent.mkdir(exist_ok=True)
            dest = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        except OSError:  # a read-only data folder just means no cache: decode into memory
            cpath = None
        else:
            try:
                ok = _decode_into(files, size, channels, workers, dest)
                dest.flush()
                del dest
                with atomic_path(okpath) as t, open(t, "wb") as f:
                    np.save(f, ok)
                os.replace(tmp, cpath)  # images last: a cache file always has its ok-mask beside it
            finally:
                tmp.unlink(missing_ok=True)
            return np.load(cpath, mmap_mode="c"), ok
    dest = np.empty(shape, dtype=np.uint8)
    return dest, _decode_into(files, size, channels, workers, dest)


def _load_folder_split(root: Path, split: str, class_names: list[str] | None, size: int, channels: int,
                       workers: int, max_bad: float, cache: bool, names_of: str = TRAINING_SPLIT
                       ) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
    files, labels, names = _list_split(root, split, class_names, names_of)
    arr, ok = _decode_cached(files, size, channels, workers, _cache_path(root, split, files, size, channels) if cache else None)
    bad = int((~ok).sum())
    labels_t = torch.tensor(labels, dtype=torch.int64)
    if not bad:
        return torch.from_numpy(arr), labels_t, names, 0  # still memory-mapped when cached
    first = files[int(np.argmin(ok))]
    warnings.warn(f"{root / split}: skipped {bad} unreadable image(s), e.g. {first}", stacklevel=3)
    if bad > max_bad * len(files):
        raise DataError(f"{root / split}: {bad} of {len(files)} images are unreadable (more than {max_bad:.0%}); "
                        "fix or remove them")
    return torch.from_numpy(np.ascontiguousarray(arr[ok])), labels_t[torch.from_numpy(ok)], names, bad


def load_image_folder(root: str | Path, split: str, *, presize: int, channels: int = 3, class_names: list[str] | None = None,
                      workers: int | None = None, max_bad: float = 0.05, cache: bool = True,
                      names_of: str = TRAINING_SPLIT) -> ImageSet:
    """Imagenette/ImageFolder layout: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*``.

    ``class_names``, when given, are the class folders the split must have; ``names_of`` says in an error where they
    came from (:data:`TRAINING_SPLIT` or :data:`MODEL_CLASSES`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; expected ROOT/train/<class>/ and ROOT/val/<class>/")
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    imgs, labels, names, bad = _load_folder_split(root, split, class_names, presize, channels, workers, max_bad, cache, names_of)
    mean, std = (list(IMAGENET_MEAN), list(IMAGENET_STD)) if channels == 3 else ([0.5], [0.5])
    return ImageSet(imgs, labels, names, mean, std, Augment(min_scale=0.5, flip=True), bad, presize)


def load_mnist_png(root: str | Path, split: str, *, workers: int | None = None, max_bad: float = 0.05, cache: bool = True) -> ImageSet:
    """MNIST PNG folders: ``ROOT/training/<digit>/*.png`` and ``ROOT/testing/<digit>/*.png``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; expected ROOT/training/<digit>/*.png and ROOT/testing/<digit>/*.png")
    sub = "training" if split == "train" else "testing"
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    names = None if split == "train" else [p.name for p in _class_folders(root / "training")]
    imgs, labels, names, bad = _load_folder_split(root, sub, names, 28, 1, workers, max_bad, cache)
    return ImageSet(imgs, labels, names, [0.1307], [0.3081], Augment(pad=3), bad, 28)


def load_dataset(name: str, data: str | Path | None, *, presize: int = 160, workers: int | None = None) -> tuple[ImageSet, ImageSet]:
    """Train and validation :class:`ImageSet` for a dataset name (see ``DATASETS``; older names accepted)."""
    name = canonical_dataset(name)
    if name == "fashion-mnist":
        return load_fashion_mnist(data, "train"), load_fashion_mnist(data, "test")
    if data is None:
        raise DataError(f"dataset {name!r} needs --data DIR")
    if name == "mnist":
        tr = load_mnist_png(data, "train", workers=workers)
        return tr, load_mnist_png(data, "test", workers=workers)
    tr = load_image_folder(data, "train", presize=presize, workers=workers)
    return tr, load_image_folder(data, "val", presize=presize, class_names=tr.class_names, workers=workers)


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
        class_names: image folders: the model's classes, which the split's class folders must be.

    Raises:
        DataError: missing folder or files, empty folder, unknown dataset or split, nothing selected.
    """
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
                                 class_names=list(class_names) if class_names else None, names_of=MODEL_CLASSES)
    if len(full) == 0:
        raise DataError(f"{data or name}: the {split} split has no images")
    return full.subset(limit, seed)

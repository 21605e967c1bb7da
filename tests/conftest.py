"""Shared fixtures: tiny trained/untrained checkpoints and skip helpers for optional backends.

Skips go through :func:`requires` / :func:`skip` (tests/strict.py): under ``RN_DEPLOY_STRICT=1``
only "no GPU" and "no full TensorRT" may skip; every other skip fails.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rn_deploy.checkpoint import ModelConfig, save_checkpoint
from rn_deploy.models import create_model
from rn_deploy.runtime.manifest import backend_installed
from rn_deploy.serve.server import free_ports

from .diskfull import pytest_exception_interact
from .strict import pytest_collection_modifyitems, pytest_make_collect_report, pytest_runtest_makereport, requires, skip

__all__ = ["free_ports", "pytest_collection_modifyitems", "pytest_exception_interact", "pytest_make_collect_report",
           "pytest_runtest_makereport", "requires", "skip"]

FASHION_DIR = Path(os.environ.get("RN_DEPLOY_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


HAS_TRT_RTX = backend_installed("tensorrt-rtx")
HAS_TRT = backend_installed("tensorrt")
HAS_CUDA = torch.cuda.is_available()

HAS_FASHION = (FASHION_DIR / "train-images-idx3-ubyte.gz").exists()

needs_fashion = requires(HAS_FASHION, f"Fashion-MNIST not found in {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
needs_rtx = requires(HAS_TRT_RTX, "TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)")
needs_gpu = requires(HAS_CUDA, "needs a CUDA GPU", kind="gpu")  # with @pytest.mark.gpu


def ort_cuda(path: Path, **kw: Any) -> Any:
    """An ONNX Runtime CUDA runner, or a "no GPU" skip: CI's GPU hosts keep the CPU onnxruntime (.ci/run's guard)."""
    from rn_deploy.runners import OrtRunner, RunnerUnavailable

    try:
        return OrtRunner(path, provider="cuda", **kw)
    except RunnerUnavailable as e:
        if not str(e).startswith("ort-cuda: "):
            raise
        skip(f"none that ONNX Runtime can use ({e})", kind="gpu")


def make_checkpoint(path: Path, arch: str = "resnet18", n_classes: int = 5, in_channels: int = 3, size: int = 64, seed: int = 0) -> Path:
    """A checkpoint with random (but non-trivial) weights, BatchNorm stats set away from defaults."""
    return save_checkpoint(path, *make_model(arch, n_classes, in_channels, size, seed), {"note": "random test weights"})


def randomise_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every BatchNorm's weight, bias and running stats set away from their defaults (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                # zero-init BNs would make residual branches vanish: randomise so tests see them.
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


def make_model(arch: str = "resnet18", n_classes: int = 5, in_channels: int = 3, size: int = 64, seed: int = 0
               ) -> tuple[torch.nn.Module, ModelConfig]:
    """The model and config :func:`make_checkpoint` saves, in memory."""
    torch.manual_seed(seed)
    model = randomise_batchnorm(create_model(arch, n_classes=n_classes, in_channels=in_channels))
    cfg = ModelConfig(arch=arch, n_classes=n_classes, in_channels=in_channels, image_size=[size, size])
    return model, cfg


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", arch="resnet18", n_classes=5)


def write_imagefolder(root: Path, classes: dict[str, tuple[int, int, int]], n: int, seed: int = 0) -> None:
    """Images whose class is their dominant colour, with noise and random sizes."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for name, rgb in classes.items():
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n if split == "train" else n // 2):
                h, w = rng.integers(40, 70, size=2)
                arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.JPEG" if i % 2 else d / f"{i}.png")

"""PyTorch eager runner (the FP32 reference on CPU; FP16 on CUDA)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .base import BaseRunner, RunnerUnavailable


class TorchRunner(BaseRunner):
    """Runs a checkpoint's model with PyTorch (a fresh output tensor every call).

    Args:
        source: checkpoint path or a module.
        device: ``cpu`` or ``cuda``.
        precision: ``fp32`` or ``fp16`` (CUDA only).
        channels_last: channels-last memory format (CUDA).
    """

    framework = "torch"

    def __init__(self, source: str | Path | nn.Module, device: str = "cpu", precision: str = "fp32", channels_last: bool = True):
        from ..checkpoint import load_checkpoint

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RunnerUnavailable("torch CUDA: no CUDA GPU visible")
        if precision == "fp16" and not device.startswith("cuda"):
            raise RunnerUnavailable("torch fp16 runs on CUDA only (CPU half convolutions are slow and not a deploy target)")
        model = source if isinstance(source, nn.Module) else load_checkpoint(source).model
        self.artifact = None if isinstance(source, nn.Module) else str(source)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.eval().to(device=device, dtype=self.dtype)
        self.channels_last = channels_last and device.startswith("cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.device, self.precision = device, precision
        self.name = f"torch-{'cuda' if device.startswith('cuda') else 'cpu'}-{precision}"
        if device.startswith("cuda"):
            # The reference must not silently use TF32.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def infer(self, prepared: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(prepared).float()

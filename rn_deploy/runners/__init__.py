"""Runners: one protocol over PyTorch, ONNX Runtime (CPU/CUDA) and TensorRT engines.

A runner is a context manager with ``prepare(x)`` (move a float32 NCHW CPU tensor to where the
runner computes, outside any timing), ``infer(prepared) -> logits`` (a float32 tensor, on the
runner's device, that the caller owns: no later call writes into it) and ``sync()`` (wait for
the device). ``framework``, ``device`` and ``precision`` say what computes; ``artifact`` is the
file it runs (None for an in-memory model). Creating a runner for a backend that is
not available here raises :class:`RunnerUnavailable` with the reason, which reports print as a
skip rather than a crash.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import RnDeployError


class RunnerUnavailable(RnDeployError):
    """The backend cannot run here (library or GPU missing); the message says why."""


@runtime_checkable
class Runner(Protocol):
    name: str
    framework: str
    device: str
    precision: str

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> None: ...

    def prepare(self, x: torch.Tensor) -> Any: ...

    def infer(self, prepared: Any) -> torch.Tensor: ...

    def sync(self) -> None: ...

    def covers(self, shape: tuple[int, ...]) -> str | None: ...

    def close(self) -> None: ...


class BaseRunner:
    name = "base"
    framework = "base"
    device = "cpu"
    precision = "fp32"
    artifact: str | None = None

    def __enter__(self) -> BaseRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pass

    def prepare(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def infer(self, prepared: Any) -> torch.Tensor:
        raise NotImplementedError

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def covers(self, shape: tuple[int, ...]) -> str | None:
        """None if this runner can take ``shape``, else the reason it cannot."""
        return None


from .ort import OrtRunner  # noqa: E402
from .torch_runner import TorchRunner  # noqa: E402
from .trt import TrtRunner  # noqa: E402

__all__ = ["BaseRunner", "OrtRunner", "Runner", "RunnerUnavailable", "TorchRunner", "TrtRunner"]

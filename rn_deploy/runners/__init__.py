"""Runners: one protocol over PyTorch, ONNX Runtime (CPU/CUDA) and TensorRT engines.

A runner is a context manager with ``prepare(x)`` (move a float32 NCHW CPU tensor to where the
runner computes, outside any timing), ``infer(prepared) -> logits`` (a float32 tensor, on the
runner's device, that the caller owns: no later call writes into it) and ``sync()`` (wait for
the device). ``framework``, ``device`` and ``precision`` say what computes; ``artifact`` is the
file it runs (None for an in-memory model). Creating a runner for a backend that is
not available here raises :class:`RunnerUnavailable` with the reason, which reports print as a
skip rather than a crash; an artifact the runner cannot take (its own tensor types, say) raises
:class:`ArtifactUnsupported`, which is a failure wherever it is met.
"""

from __future__ import annotations

from .base import ArtifactUnsupported, BaseRunner, Runner, RunnerUnavailable
from .ort import OrtRunner
from .torch_runner import TorchRunner
from .trt import TrtRunner

__all__ = ["ArtifactUnsupported", "BaseRunner", "OrtRunner", "Runner", "RunnerUnavailable", "TorchRunner", "TrtRunner"]

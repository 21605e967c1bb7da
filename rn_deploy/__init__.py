"""rn-deploy: ResNet classifiers from checkpoint to ONNX to TensorRT engine, with validation.

The public names below load on first use (PEP 562), so ``import rn_deploy`` (and the CLI's ``--help``)
imports neither torch nor any submodule, and submodules never depend on the package's own namespace.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, ModelConfig, load_checkpoint, save_checkpoint
    from .engine import Engine, Prediction
    from .errors import RnDeployError
    from .models import create_model, list_models

# public name -> the submodule that defines it
_LAZY = {
    "Checkpoint": "checkpoint",
    "ModelConfig": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "Engine": "engine",
    "Prediction": "engine",
    "RnDeployError": "errors",
    "create_model": "models",
    "list_models": "models",
}

__all__ = [
    "Checkpoint",
    "Engine",
    "Prediction",
    "ModelConfig",
    "RnDeployError",
    "create_model",
    "list_models",
    "load_checkpoint",
    "save_checkpoint",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""rn-deploy: ResNet classifiers from checkpoint to ONNX to TensorRT engine, with validation.

The public names below load on first use (PEP 562), so ``import rn_deploy`` (and the CLI's ``--help``)
imports neither torch nor any submodule, and submodules never depend on the package's own namespace.
"""

from __future__ import annotations

import os as _os
import signal as _signal
import sys as _sys


def _interrupted_at_start(_signum: int, _frame: object) -> None:
    """Ctrl-C before the command runs (while Python imports): nothing was written, so exit 130 at once, quietly."""
    _os.write(2, b"\ninterrupted: nothing was written; no partial file is left\n")
    _os._exit(130)


_interrupted_at_start.rn_deploy_start = True  # type: ignore[attr-defined]  # cli.group hands SIGINT back to Python here
# First of all, and only for the command line (`rn-deploy ...`, `python -m rn_deploy[.cli] ...`), never for a program that
# imports rn_deploy: a KeyboardInterrupt raised inside an import would print its traceback and exit -2.
_argv = list(getattr(_sys, "orig_argv", []))
if (_os.path.basename(_sys.argv[0] if _sys.argv else "") == "rn-deploy"
        or any(a == "-m" and _argv[i + 1:i + 2] in (["rn_deploy"], ["rn_deploy.cli"]) for i, a in enumerate(_argv))):
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # not where SIGINT is ignored (a background job)
        _signal.signal(_signal.SIGINT, _interrupted_at_start)

import importlib  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from .version import __version__  # noqa: E402

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

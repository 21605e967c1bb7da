"""Training module: produces rn-deploy checkpoints (``exports/NAME/model.pt``) on CUDA or CPU.

``TrainConfig``, ``TrainResult`` and ``fit`` load on first use (PEP 562): ``rn-deploy train --help``
imports this package without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import TrainConfig, TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "fit"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

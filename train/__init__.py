"""Training module: produces rn-deploy checkpoints (``exports/NAME/model.pt``) on CUDA or CPU."""

from .loop import TrainConfig, TrainResult, fit

__all__ = ["TrainConfig", "TrainResult", "fit"]

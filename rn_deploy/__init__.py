"""rn-deploy: ResNet classifiers from checkpoint to ONNX to TensorRT engine, with validation."""

from __future__ import annotations

from .checkpoint import Checkpoint, ModelConfig, load_checkpoint, save_checkpoint
from .engine import Engine, Prediction
from .errors import RnDeployError
from .models import create_model, list_models

__version__ = "0.1.0"

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

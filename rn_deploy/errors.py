"""Error types shown to users.

Every error a user can cause (bad file, bad value, missing library) is raised as a subclass of
:class:`RnDeployError` with a one-line message that names the file or value and says how to fix
it. The CLI prints these without a traceback and exits 1.
"""

from __future__ import annotations


class RnDeployError(Exception):
    """Base class of errors caused by input the user can change."""


class ModelError(RnDeployError, ValueError):
    """Unknown architecture or invalid model arguments."""


class CheckpointError(RnDeployError):
    """A checkpoint file is missing, unreadable, unsafe or does not match its config."""


class ExportError(RnDeployError):
    """ONNX export was refused or its verification failed."""


class BuildError(RnDeployError):
    """An engine could not be built (parser errors, invalid profiles, builder failure)."""


class ManifestError(RnDeployError):
    """An engine's manifest (ENGINE.json) is missing, unreadable or of another format."""


class MissingDependencyError(RnDeployError, ImportError):
    """An optional library (TensorRT, ONNX Runtime GPU, ...) is not installed."""


class EngineCompatibilityError(RnDeployError):
    """An engine does not match the installed library or GPU."""


class DataError(RnDeployError):
    """A dataset folder or file is missing or malformed."""


class ValidationFailed(RnDeployError):
    """Validation ran, and at least one cell is outside its tolerance."""


class RequestError(RnDeployError):
    """A served request carries no usable image (not an image, truncated, too large, wrong channels, empty)."""

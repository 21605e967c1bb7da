"""``rn-deploy doctor``: what this machine has, and whether given engines / ONNX files will load on it.

:func:`environment` (:mod:`.probes`) is the one description of a machine (OS, Python, driver and CUDA, GPUs, torch,
ONNX Runtime, TensorRT / TensorRT-RTX, Jetson model and power mode): validation and benchmark
reports record it so that a number always says where it was measured. Every probe is cheap and
none raises: what cannot be read is ``None``.

:func:`versions_block` (:mod:`.versions`) lists the package versions that matter and the known-bad combinations.

:func:`check_artifact` (:mod:`.artifacts`) answers "will it load here" for one file, with the exact reason and the
command that fixes it when it will not. :func:`doctor` and :func:`format_doctor` (:mod:`.report`) put it together.
"""

from .artifacts import TARGET_PLACEHOLDER, ArtifactCheck, artifact_sizes, check_artifact, check_engine, check_onnx
from .probes import (
    Run,
    cuda_driver_version,
    environment,
    gpus,
    jetson_info,
    nvidia_driver,
    onnxruntime_info,
    run_quiet,
    torch_info,
    trt_info,
)
from .report import doctor, format_doctor, format_versions
from .versions import CONFLICTS, PACKAGES, known_bad, package_versions, versions_block

__all__ = [
    "CONFLICTS", "PACKAGES", "TARGET_PLACEHOLDER", "ArtifactCheck", "Run", "artifact_sizes", "check_artifact", "check_engine",
    "check_onnx", "cuda_driver_version", "doctor", "environment", "format_doctor", "format_versions", "gpus", "jetson_info",
    "known_bad", "nvidia_driver", "onnxruntime_info", "package_versions", "run_quiet", "torch_info", "trt_info", "versions_block",
]

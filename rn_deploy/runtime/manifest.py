"""The engine manifest format (``ENGINE.json``), optimisation profiles, the backends and the GPU-family rule.

Shared by the writer (rn_deploy.builder) and the readers (rn_deploy.runtime.checks, runners, Engine): it is a
description of an artifact, so it sits on the artifacts layer and imports nothing build-time.
"""

from __future__ import annotations

import importlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import names
from ..errors import BuildError, ManifestError, MissingDependencyError
from ..filekind import expect
from ..strictjson import ToDict

if TYPE_CHECKING:
    pass  # TensorRT 10.x API from tensorrt-stubs

MANIFEST_FORMAT = "rn-deploy-engine/1"
BACKENDS = {
    "tensorrt": ("tensorrt", "pip install tensorrt  (or the rn-deploy[trt] extra; needs an NVIDIA GPU and driver)"),
    "tensorrt-rtx": ("tensorrt_rtx_bindings", "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings  (or rn-deploy[trt-rtx])"),
}
Shape = tuple[int, int, int, int]
# The lean runtime library (libnvinfer_lean.so.N of the TensorRT that built the engine) that runs a
# version-compatible engine built with --exclude-lean-runtime on a later TensorRT.
LEAN_RUNTIME_ENV = "RN_DEPLOY_TRT_LEAN_RUNTIME"


def import_backend(backend: str) -> Any:
    """The TensorRT module of ``backend``, or :class:`MissingDependencyError` saying what to install."""
    if backend not in BACKENDS:
        raise BuildError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module, install = BACKENDS[backend]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"backend {backend!r} needs the Python module {module!r} ({e}); install it: {install}") from None
    if not hasattr(mod, "Builder"):  # e.g. an empty namespace package left by a failed install
        raise MissingDependencyError(f"backend {backend!r}: module {module!r} is there but holds no TensorRT API; install it: {install}")
    return mod


def backend_installed(backend: str) -> bool:
    """Whether ``backend``'s TensorRT module is installed and really TensorRT (the one presence check):
    a failed ``pip install tensorrt`` or ``tensorrt-stubs`` can leave an importable, empty namespace."""
    try:
        import_backend(backend)
    except MissingDependencyError:
        return False
    return True


# TensorRT-RTX's targets when its bindings are not installed (tensorrt-rtx 1.7: ComputeCapability lists these).
_RTX_TARGETS_FALLBACK = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")


def rtx_targets(trt: Any | None = None) -> list[str]:
    """The compute capabilities TensorRT-RTX builds for, as ``smXY``: the installed bindings' ``ComputeCapability``.

    The one place the TensorRT-RTX GPU-family rule lives: Turing, Ampere (not Orin's sm87), Ada and
    consumer/workstation Blackwell (sm120/sm121), not Hopper (sm90) nor data-centre Blackwell (sm100).
    """
    if trt is None:
        try:
            trt = importlib.import_module(BACKENDS["tensorrt-rtx"][0])
        except ImportError:
            return list(_RTX_TARGETS_FALLBACK)
    cc = getattr(trt, "ComputeCapability", None)
    if cc is None:
        return list(_RTX_TARGETS_FALLBACK)
    return [k.lower() for k in cc.__members__ if k.startswith("SM")]


def sm_name(compute_capability: str) -> str:
    """``'8.9'`` -> ``'sm89'``."""
    return "sm" + compute_capability.replace(".", "")


def rtx_runs_on(compute_capability: str, trt: Any | None = None) -> bool:
    """Whether TensorRT-RTX engines can run on a GPU of this compute capability (``'8.9'``)."""
    return sm_name(compute_capability) in rtx_targets(trt)


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------


def parse_shape(text: str) -> Shape:
    """``'8x3x224x224'`` -> (8, 3, 224, 224)."""
    try:
        dims = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise BuildError(f"shape {text!r} is not NxCxHxW (e.g. 8x3x224x224)") from None
    if len(dims) != 4:
        raise BuildError(f"shape {text!r} has rank {len(dims)}; the input is NxCxHxW (rank 4)")
    if min(dims) < 1:
        raise BuildError(f"shape {text!r} has a dimension < 1; every one of N, C, H, W is at least 1")
    return dims  # type: ignore[return-value]


@dataclass(frozen=True)
class Profile:
    """One optimisation profile of the input tensor: min/opt/max NCHW shapes."""

    min: Shape
    opt: Shape
    max: Shape

    @classmethod
    def parse(cls, text: str) -> Profile:
        """``'1x3x64x64:8x3x224x224:32x3x512x512'`` (min:opt:max)."""
        parts = text.split(":")
        if len(parts) != 3:
            raise BuildError(f"profile {text!r} is not MIN:OPT:MAX, e.g. 1x3x64x64:8x3x224x224:32x3x512x512")
        lo, opt, hi = (parse_shape(p) for p in parts)
        profile = cls(lo, opt, hi)
        profile.check_order(f"profile {text!r}")
        return profile

    def check_order(self, where: str) -> None:
        """Refuse, naming ``where``, a profile whose min <= opt <= max fails on some axis."""
        for i, axis in enumerate(("batch", "channels", "height", "width")):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise BuildError(f"{where}: profile {axis} must satisfy min <= opt <= max, got "
                                 f"{self.min[i]} / {self.opt[i]} / {self.max[i]}")

    def covers(self, shape: Sequence[int]) -> bool:
        return len(shape) == 4 and all(a <= s <= b for a, s, b in zip(self.min, shape, self.max, strict=True))

    def check(self, channels: int | None, min_hw: int | None, where: str) -> None:
        for label, s in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(s) != 4:
                raise BuildError(f"{where}: profile {label} shape {s} has rank {len(s)}; the input is NxCxHxW")
            if min(s) < 1:
                raise BuildError(f"{where}: profile {label} shape {fmt_shape(s)} has a dimension < 1")
            if channels is not None and s[1] != channels:
                raise BuildError(f"{where}: profile {label} shape {fmt_shape(s)} has {s[1]} channels; the model takes {channels}")
        self.check_order(where)
        if min_hw is not None and min(self.min[2:]) < min_hw:
            raise BuildError(f"{where}: profile min {fmt_shape(self.min)} is below the model's minimum size {min_hw}x{min_hw}")

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> Profile:
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))  # type: ignore[arg-type]


def fmt_shape(s: Sequence[int]) -> str:
    return "x".join(str(d) for d in s)



# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


@dataclass
class EngineManifest(ToDict):
    """``ENGINE.json``: what an engine is, what built it and for which GPUs."""

    backend: str
    library_version: str
    precision: str
    strongly_typed: bool
    fp16_flag: bool
    targets: list[str]
    build_gpu: dict[str, Any] | None
    profiles: list[dict[str, dict[str, list[int]]]]
    onnx_path: str
    onnx_sha256: str
    built_from: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    build_seconds: float
    built_at: str
    options: dict[str, Any]
    engine_path: str
    engine_size: int
    engine_sha256: str
    config: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    format: str = MANIFEST_FORMAT
    built_from_sha256: str = ""  # the file the parser read: the ONNX itself, or the FP16 copy made from it
    builder_flags: list[str] = field(default_factory=list)  # BuilderFlag names set when the engine was built
    hardware_compat: str = "none"
    version_compatible: bool = False
    lean_runtime: str | None = None  # "embedded" or "excluded" for version-compatible engines
    build_platform: str | None = None  # e.g. "Linux-x86_64": full TensorRT engines never cross OS/CPU platforms
    source_sha256: str | None = None  # weights digest of the checkpoint the ONNX came from (its rn_deploy.source_sha256)
    layout: str = "NCHW"  # the input's layout; profiles are recorded in NCHW order whatever it is

    @property
    def input_profiles(self) -> list[Profile]:
        """Each profile of the one image input (keyed by its name: ``input``, or a foreign ONNX's own), NCHW order."""
        return [Profile.from_dict(p[names.INPUT] if names.INPUT in p else next(iter(p.values()))) for p in self.profiles]

    @classmethod
    def load(cls, engine_path: str | Path) -> EngineManifest:
        expect(engine_path, "engine")
        path = manifest_path(engine_path)
        if not path.exists():
            raise ManifestError(f"{path}: no manifest beside the engine; rebuild it with `rn-deploy build`")
        try:
            d = json.loads(path.read_text())
            if d.get("format") != MANIFEST_FORMAT:
                raise ManifestError(f"{path}: manifest format {d.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (json.JSONDecodeError, TypeError) as e:
            raise ManifestError(f"{path}: not a valid engine manifest ({e})") from None


def host_platform() -> str:
    """``System-machine`` of this host (``Linux-x86_64``, ``Linux-aarch64`` on Jetson): engines never cross it."""
    return f"{platform.system()}-{platform.machine()}"


def manifest_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def gpu_info(trt: Any) -> dict[str, Any] | None:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - torch without CUDA support
        return None
    return None



# --------------------------------------------------------------------------------------------
# Compatibility and inspection
# --------------------------------------------------------------------------------------------


def cc_tuple(cc: str) -> tuple[int, int]:
    """``'8.6'`` -> (8, 6)."""
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


def version_tuple(version: str) -> tuple[int, ...]:
    """``'10.3.0.30'`` -> (10, 3, 0, 30); non-numeric parts (``'1.0rc'``) stop the tuple."""
    out = []
    for part in version.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)

"""Runtime checks of an engine that exists: compatibility, checked deserialisation, inspection, the rebuild command.

Compatibility with the installed TensorRT and this GPU comes first; deserialisation runs only after the checks,
and a failed check suggests the command that rebuilds the engine for here.

Runners and the Engine import this module; it never imports build-time code (rn_deploy.builder).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import sha256_file
from ..errors import EngineCompatibilityError, ManifestError
from .manifest import (
    LEAN_RUNTIME_ENV,
    EngineManifest,
    cc_tuple,
    fmt_shape,
    gpu_info,
    host_platform,
    import_backend,
    manifest_path,
    rtx_runs_on,
    rtx_targets,
    sm_name,
    version_tuple,
)

if TYPE_CHECKING:
    import tensorrt_bindings as trt_api  # TensorRT 10.x API from tensorrt-stubs


def rebuild_command(m: EngineManifest, *, backend: str | None = None, targets: Sequence[str] | None = None,
                    trt: Any | None = None) -> str:
    """The full ``rn-deploy build`` command that rebuilds ``m``'s engine: same ONNX, output, precision, profiles
    (profile 0 as --min/--opt/--max, the others as --profile in order) and options.

    ``backend``/``targets`` override the manifest's; TensorRT-RTX targets are limited to those the
    installed TensorRT-RTX knows (:func:`rtx_targets`).
    """
    backend = backend or m.backend
    args = ["rn-deploy", "build", m.onnx_path, "-o", m.engine_path, "--backend", backend,
            "--fp32" if m.precision == "fp32" else "--fp16"]
    for i, p in enumerate(m.input_profiles):
        if i == 0:
            args += ["--min", fmt_shape(p.min), "--opt", fmt_shape(p.opt), "--max", fmt_shape(p.max)]
        else:
            args += ["--profile", f"{fmt_shape(p.min)}:{fmt_shape(p.opt)}:{fmt_shape(p.max)}"]
    if backend == "tensorrt-rtx":
        known = rtx_targets(trt)
        wanted = [t for t in (targets if targets is not None else m.targets) if t in known]
        if wanted:
            args += ["--target", ",".join(wanted)]
    opts = m.options or {}
    if opts.get("workspace"):
        args += ["--workspace", str(int(opts["workspace"]) >> 20)]
    if opts.get("builder_opt_level") is not None:
        args += ["--opt-level", str(opts["builder_opt_level"])]
    if opts.get("timing_cache") and backend == "tensorrt":
        args += ["--timing-cache", str(opts["timing_cache"])]
    return shlex.join(args)


def _rebuild_hint(m: EngineManifest, **kw: Any) -> str:
    return f"rebuild: {rebuild_command(m, **kw)}"


def _check_version_compatible(m: EngineManifest, installed: str, where: Path) -> None:
    """A version-compatible engine loads on its own TensorRT or a later one of the same major."""

    built, have = version_tuple(m.library_version), version_tuple(installed)
    if not built or not have or have[0] != built[0] or have < built:
        raise EngineCompatibilityError(f"{where}: version-compatible engine built with {m.backend} {m.library_version} loads on "
                                       f"{m.library_version} or a later {built[0] if built else '?'}.x; installed is "
                                       f"{installed}; {_rebuild_hint(m)} --version-compatible")
    if m.lean_runtime == "excluded" and have[:3] != built[:3]:
        lean = os.environ.get(LEAN_RUNTIME_ENV)
        if not lean or not Path(lean).is_file():
            raise EngineCompatibilityError(f"{where}: engine was built with --exclude-lean-runtime, so TensorRT {installed} needs the "
                                           f"lean runtime of {m.library_version}: set {LEAN_RUNTIME_ENV}=/path/to/libnvinfer_lean.so."
                                           f"{built[0]} from TensorRT {m.library_version} (now {lean or 'unset'}), or "
                                           f"{_rebuild_hint(m)} --version-compatible")


def check_compatible(m: EngineManifest, trt: Any, gpu_cc: str | None) -> None:
    """Raise :class:`EngineCompatibilityError` unless ``trt`` (and the GPU, when ``gpu_cc`` is given) can run ``m``'s engine.

    The message ends with the full command that rebuilds the engine for this machine.
    """

    where = manifest_path(m.engine_path)
    installed = str(trt.__version__)
    # NVIDIA: serialised TensorRT engines are not portable across platforms (cross-platform builds need RuntimePlatform).
    if m.backend == "tensorrt" and m.build_platform and m.build_platform != host_platform():
        raise EngineCompatibilityError(f"{where}: engine built on {m.build_platform}, this machine is {host_platform()}; engines do "
                                       f"not cross platforms: {_rebuild_hint(m)} (on this machine)")
    if m.version_compatible:
        _check_version_compatible(m, installed, where)
    elif installed.split(".")[:3] != m.library_version.split(".")[:3]:
        raise EngineCompatibilityError(f"{where}: engine built with {m.backend} {m.library_version}, installed is {installed}; "
                                       f"{_rebuild_hint(m, trt=trt)}")
    if gpu_cc is None:
        return
    sm = sm_name(gpu_cc)
    if m.backend == "tensorrt-rtx" and not rtx_runs_on(gpu_cc, trt):
        raise EngineCompatibilityError(f"{where}: TensorRT-RTX does not run on this GPU ({sm}; it supports "
                                       f"{','.join(rtx_targets(trt))}); build with full TensorRT on it: "
                                       f"{rebuild_command(m, backend='tensorrt')}")
    if m.backend == "tensorrt-rtx" and m.targets and sm not in m.targets:
        raise EngineCompatibilityError(f"{where}: engine targets {','.join(m.targets)}, this GPU is {sm}; "
                                       f"{_rebuild_hint(m, targets=[*m.targets, sm], trt=trt)}")
    if m.backend == "tensorrt" and m.hardware_compat == "ampere-plus":
        if cc_tuple(gpu_cc) < (8, 0):
            raise EngineCompatibilityError(f"{where}: Ampere-plus engine needs compute capability >= 8.0, this GPU is {gpu_cc}; "
                                           f"{_rebuild_hint(m, trt=trt)} (on this GPU, without --hardware-compat)")
        return
    if m.backend == "tensorrt" and m.build_gpu and m.build_gpu.get("compute_capability") != gpu_cc:
        raise EngineCompatibilityError(f"{where}: engine built for compute capability {m.build_gpu.get('compute_capability')}, "
                                       f"this GPU is {gpu_cc}; on this GPU, {_rebuild_hint(m)}")


def check_engine_file(engine_path: str | Path) -> tuple[EngineManifest, Any, bytes]:
    """Everything that can be checked without a GPU: manifest, digest, library installed and same version."""

    engine_path = Path(engine_path)
    if not engine_path.exists():
        raise ManifestError(f"{engine_path}: no such engine file")
    m = EngineManifest.load(engine_path)
    data = engine_path.read_bytes()
    check_engine_digest(m, hashlib.sha256(data).hexdigest(), engine_path)
    trt = import_backend(m.backend)
    check_compatible(m, trt, None)
    return m, trt, data


def check_engine_digest(m: EngineManifest, digest: str, engine_path: str | Path) -> None:
    """The engine's sha256 must equal the manifest's ``engine_sha256``, which must be a sha256: an empty or malformed one
    is not "nothing to check" (deserialising may allow the plan's host code, trusted only on a matching digest)."""
    if not re.fullmatch(r"[0-9a-f]{64}", str(m.engine_sha256 or "")):
        raise EngineCompatibilityError(f"{engine_path}: its manifest records no valid engine_sha256 ({m.engine_sha256!r}), so the "
                                       f"engine cannot be checked and is not loaded; {_rebuild_hint(m)}")
    if digest != m.engine_sha256:
        raise EngineCompatibilityError(f"{engine_path}: engine bytes do not match its manifest (sha256); the file was changed "
                                       f"or truncated; {_rebuild_hint(m)}")


def deserialize_checked(m: EngineManifest, trt: Any, data: bytes) -> Any:
    """Check the GPU against the manifest, then deserialise the engine."""

    gpu = gpu_info(trt)
    if gpu is None:
        raise EngineCompatibilityError(f"{m.engine_path}: no CUDA GPU visible; {m.backend} engines need one to run")
    check_compatible(m, trt, gpu["compute_capability"])
    runtime: trt_api.Runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if m.version_compatible:  # host code is allowed below on the digest alone: check it here too, whoever called
        check_engine_digest(m, hashlib.sha256(data).hexdigest(), m.engine_path)
        runtime = _version_compatible_runtime(m, runtime, str(trt.__version__))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineCompatibilityError(f"{m.engine_path}: {m.backend} could not deserialise the engine; {_rebuild_hint(m)}")
    return engine


def _version_compatible_runtime(m: EngineManifest, runtime: trt_api.Runtime, installed: str) -> trt_api.Runtime:
    """The runtime that runs a version-compatible plan: its embedded lean runtime is host code we must allow,
    and a plan without one runs on the building release's lean library (same release: the full runtime does).
    """
    if m.lean_runtime == "excluded" and version_tuple(installed)[:3] != version_tuple(m.library_version)[:3]:
        return runtime.load_runtime(os.environ[LEAN_RUNTIME_ENV])  # presence checked by check_compatible
    runtime.engine_host_code_allowed = True  # the plan's lean runtime: rn-deploy built it, the digest matched
    return runtime


def load_engine_checked(engine_path: str | Path) -> tuple[EngineManifest, Any, Any]:
    """Check the manifest against the installed library and GPU, then deserialise: (manifest, trt, engine)."""
    m, trt, data = check_engine_file(engine_path)
    return m, trt, deserialize_checked(m, trt, data)


def inspect_engine(engine_path: str | Path) -> dict[str, Any]:
    """The manifest, plus the engine inspector's layers and precisions where the engine can be deserialised."""

    if not Path(engine_path).is_file():
        raise ManifestError(f"{engine_path}: no such engine file")
    m = EngineManifest.load(engine_path)
    check_engine_digest(m, sha256_file(engine_path), engine_path)  # a changed engine is an error, not a skipped detail
    out: dict[str, Any] = {"manifest": m.to_dict(), "layers": None, "layers_skipped": None}
    try:
        _m, trt, engine = load_engine_checked(engine_path)
    except Exception as e:  # noqa: BLE001 - report why layer info is unavailable, keep the manifest
        out["layers_skipped"] = str(e)
        return out
    insp = engine.create_engine_inspector()
    info = json.loads(insp.get_engine_information(trt.LayerInformationFormat.JSON))
    out["layers"] = info.get("Layers", info)
    return out

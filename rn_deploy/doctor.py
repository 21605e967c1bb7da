"""``rn-deploy doctor``: what this machine has, and whether given engines / ONNX files will load on it.

:func:`environment` is the one description of a machine (OS, Python, driver and CUDA, GPUs, torch,
ONNX Runtime, TensorRT / TensorRT-RTX, Jetson model and power mode): validation and benchmark
reports record it so that a number always says where it was measured. Every probe is cheap and
none raises: what cannot be read is ``None``.

:func:`check_artifact` answers "will it load here" for one file, with the exact reason and the
command that fixes it when it will not.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError, RnDeployError
from .strictjson import ToDict

Run = Callable[[Sequence[str]], str | None]


def run_quiet(cmd: Sequence[str], timeout: float = 10.0) -> str | None:
    """stdout of ``cmd``, or None when it is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Environment probes
# --------------------------------------------------------------------------------------------


def cuda_driver_version() -> str | None:
    """The CUDA version the installed driver supports (``cuDriverGetVersion``), e.g. ``'13.0'``; None without a driver."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value:
            return f"{v.value // 1000}.{v.value % 1000 // 10}"
    return None


def nvidia_driver(run: Run = run_quiet) -> str | None:
    """The NVIDIA kernel driver version (``nvidia-smi``, else ``/proc/driver/nvidia/version``)."""
    out = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    if out and out.strip():
        return out.strip().splitlines()[0].strip()
    text = _read(Path("/proc/driver/nvidia/version")) or ""
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return m.group(1) if m else None


def gpus() -> list[dict[str, Any]]:
    """Visible CUDA GPUs as torch sees them: index, name, compute capability, memory."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                        "memory_gib": round(p.total_memory / 2**30, 1)})
        return out
    except Exception:  # noqa: BLE001 - a broken CUDA install is reported as "no GPU", not a crash
        return []


def _module_version(module: str) -> tuple[str | None, str | None]:
    """(version, None) or (None, why not)."""
    if importlib.util.find_spec(module) is None:
        return None, "not installed"
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - e.g. a library whose shared objects are missing
        return None, f"import failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    version = getattr(mod, "__version__", None)
    if version:
        return str(version), None
    if getattr(mod, "__file__", None) is None:
        return None, f"only an empty '{module}' folder (a failed or partial install); reinstall it"
    return None, "no __version__ (incomplete install?)"


def torch_info() -> dict[str, Any]:
    version, why = _module_version("torch")
    if version is None:
        return {"version": None, "reason": why}
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"version": version, "cuda_build": torch.version.cuda, "cudnn": cudnn, "cuda_available": torch.cuda.is_available()}


def onnxruntime_info() -> dict[str, Any]:
    version, why = _module_version("onnxruntime")
    if version is None:
        return {"version": None, "reason": why}
    import onnxruntime as ort

    return {"version": version, "providers": list(ort.get_available_providers()), "device": ort.get_device()}


def trt_info() -> dict[str, Any]:
    """Versions of full TensorRT and TensorRT-RTX (or why each is absent)."""
    out: dict[str, Any] = {}
    for key, module in (("tensorrt", "tensorrt"), ("tensorrt_rtx", "tensorrt_rtx_bindings")):
        version, why = _module_version(module)
        out[key] = {"version": version} if version else {"version": None, "reason": why}
    return out


def jetson_info(root: Path = Path("/"), run: Run = run_quiet) -> dict[str, Any] | None:
    """Jetson model, L4T release, power mode (``nvpmodel -q``) and clocks; None when this is not a Jetson.

    Args:
        root: file system root to read (``/``; a test points it at a prepared tree).
        run: command runner (``nvpmodel`` lives only on Jetsons).
    """
    model = _read(root / "proc/device-tree/model")
    release = _read(root / "etc/nv_tegra_release")
    if not release and not (model and "jetson" in model.lower()):
        return None
    info: dict[str, Any] = {"model": model, "l4t": None, "power_mode": None, "power_mode_id": None,
                            "gpu_freq_mhz": None, "gpu_max_freq_mhz": None, "cpu_max_freq_mhz": None}
    if release:
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", release)
        info["l4t"] = f"{m.group(1)}.{m.group(2)}" if m else release.splitlines()[0]
    q = run(["nvpmodel", "-q"])
    if q:
        m = re.search(r"NV Power Mode:\s*(\S+)", q)
        info["power_mode"] = m.group(1) if m else None
        ids = [ln.strip() for ln in q.splitlines() if ln.strip().isdigit()]
        info["power_mode_id"] = int(ids[0]) if ids else None
    for dev in sorted((root / "sys/class/devfreq").glob("*")):
        name = (_read(dev / "device/of_node/name") or "") + dev.name
        if "gpu" in name or "ga10b" in name or "gv11b" in name or "gp10b" in name:
            cur, hi = _read(dev / "cur_freq"), _read(dev / "max_freq")
            info["gpu_freq_mhz"] = int(cur) // 1_000_000 if cur and cur.isdigit() else None
            info["gpu_max_freq_mhz"] = int(hi) // 1_000_000 if hi and hi.isdigit() else None
            break
    cpu_max = _read(root / "sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq")
    info["cpu_max_freq_mhz"] = int(cpu_max) // 1000 if cpu_max and cpu_max.isdigit() else None
    return info


def environment(run: Run = run_quiet) -> dict[str, Any]:
    """This machine in one JSON-able block: record it beside every measured number (validate, bench)."""
    from .version import __version__

    return {
        "rn_deploy": __version__,
        "os": {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
               "platform": platform.platform()},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "driver": {"nvidia": nvidia_driver(run), "cuda": cuda_driver_version()},
        "gpus": gpus(),
        "torch": torch_info(),
        "onnxruntime": onnxruntime_info(),
        **trt_info(),
        "jetson": jetson_info(run=run),
    }


# --------------------------------------------------------------------------------------------
# Package versions and known-bad combinations
# --------------------------------------------------------------------------------------------

# The distributions whose versions decide whether rn-deploy's parts work together (pip names).
PACKAGES = ("rn-deploy", "numpy", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
            "tensorrt-rtx-cu13-bindings", "nvidia-pytriton", "tritonclient", "cuda-bindings", "cuda-python", "nvidia-modelopt",
            "cupy-cuda12x")
# Pairs that are wrong together whatever their versions: (a, b, why and the fix).
CONFLICTS = (("onnxruntime", "onnxruntime-gpu", "both install the one `onnxruntime` module, and whichever was installed last "
              "wins: keep one (pip uninstall -y onnxruntime-gpu onnxruntime && pip install onnxruntime, or onnxruntime-gpu "
              "on a GPU machine; `nvidia-modelopt[onnx]` pulls onnxruntime-gpu: install ModelOpt with --no-deps)"),)


def package_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`PACKAGES` (None: not installed), from package metadata (nothing imported)."""
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _requirements(versions: dict[str, str | None]) -> dict[str, list[str]]:
    import importlib.metadata as md

    return {name: list(md.requires(name) or []) for name, v in versions.items() if v is not None}


def known_bad(versions: dict[str, str | None], requirements: dict[str, list[str]]) -> list[str]:
    """What is wrong among the installed ``versions``: one line each, naming the packages, the versions and the fix.

    Two rules: a pair of :data:`CONFLICTS` installed together; a package of :data:`PACKAGES` whose declared
    requirement (``Requires-Dist``, extras left out) on another of them is not met by the installed version
    (e.g. ``nvidia-pytriton 0.7.0`` requires ``numpy<2``: numpy 2.x is installed after it).

    Args:
        versions: distribution name -> installed version or None (:func:`package_versions`).
        requirements: distribution name -> its ``Requires-Dist`` strings (``importlib.metadata.requires``).
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    have: dict[str, tuple[str, str]] = {canonicalize_name(k): (k, v) for k, v in versions.items() if v is not None}
    bad = [f"{a} {have[a][1]} and {b} {have[b][1]} are both installed: {why}"
           for a, b, why in CONFLICTS if a in have and b in have]
    for name, reqs in requirements.items():
        if canonicalize_name(name) not in have:
            continue
        for text in reqs:
            try:
                req = Requirement(text)
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
                dep = have.get(canonicalize_name(req.name))
                if dep is None or not req.specifier or req.specifier.contains(Version(dep[1]), prereleases=True):
                    continue
            except (InvalidRequirement, InvalidVersion):
                continue
            bad.append(f"{name} {have[canonicalize_name(name)][1]} requires {req.name}{req.specifier}, but {dep[0]} {dep[1]} is "
                       f"installed: pip install '{req.name}{req.specifier}' (or a {name} that accepts {dep[0]} {dep[1]})")
    return bad


def versions_block() -> dict[str, Any]:
    """The versions that matter and the known-bad combinations among them (``rn-deploy doctor``'s ``packages``)."""
    versions = package_versions()
    return {"versions": versions, "known_bad": known_bad(versions, _requirements(versions))}


# --------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------


@dataclass
class ArtifactCheck(ToDict):
    """Will ``path`` load here: the answer, and when not, why and how to fix it."""

    path: str
    kind: str  # "engine", "onnx" or "unknown"
    loadable: bool
    detail: str  # what it is / what loaded it, or the exact reason it cannot load
    fix: str | None = None


TARGET_PLACEHOLDER = "smXX"
"""The one value a printed rebuild command leaves to fill in, when no GPU here says which: the target GPU's compute capability."""


def _engine_fix(m: Any, env: dict[str, Any]) -> str:
    """The command that makes an engine for this machine from the engine's own ONNX: the manifest's precision,
    profiles and options (:func:`rn_deploy.runtime.rebuild_command`), so it runs as printed."""
    from .runtime import rebuild_command

    if m.backend == "tensorrt-rtx":
        cc = env["gpus"][0]["compute_capability"] if env["gpus"] else None
        if cc:
            return rebuild_command(m, targets=[f"sm{cc.replace('.', '')}"])
        return (f"{rebuild_command(m, targets=[])} --target {TARGET_PLACEHOLDER}  ({TARGET_PLACEHOLDER}: fill in the compute "
                "capability of the GPU that will run it, e.g. sm89)")
    return rebuild_command(m) + ("" if env["gpus"] else "  (on the GPU that will run it)")


def check_engine(path: Path, env: dict[str, Any]) -> ArtifactCheck:
    from .runtime import BACKENDS, EngineManifest, check_compatible, check_engine_file, deserialize_checked

    try:
        m = EngineManifest.load(path)
    except RnDeployError as e:
        return ArtifactCheck(str(path), "engine", False, str(e), "rn-deploy build MODEL.onnx -o " + str(path))
    try:
        m, trt, data = check_engine_file(path)
    except MissingDependencyError as e:
        return ArtifactCheck(str(path), "engine", False, str(e), BACKENDS[m.backend][1].split("  (")[0])
    except RnDeployError as e:
        return ArtifactCheck(str(path), "engine", False, str(e), _engine_fix(m, env))
    built_for = ",".join(m.targets) if m.targets else (m.build_gpu or {}).get("compute_capability", "?")
    if not env["gpus"]:
        return ArtifactCheck(str(path), "engine", False,
                             f"no CUDA GPU visible here; this {m.backend} {m.library_version} engine runs on a GPU ({built_for})",
                             f"run it on a machine with a {built_for} GPU and its driver; for another GPU: {_engine_fix(m, env)}")
    gpu = env["gpus"][0]
    try:
        check_compatible(m, trt, gpu["compute_capability"])
        deserialize_checked(m, trt, data)
    except RnDeployError as e:
        return ArtifactCheck(str(path), "engine", False, str(e), _engine_fix(m, env))
    return ArtifactCheck(str(path), "engine", True,
                         f"{m.backend} {m.library_version} {m.precision} engine deserialised on GPU 0 ({gpu['name']}, "
                         f"{gpu['compute_capability']})")


def check_onnx(path: Path, env: dict[str, Any]) -> ArtifactCheck:
    from .onnxfile import check_onnx_file, weights_fp16

    try:
        graph = check_onnx_file(path)
    except RnDeployError as e:
        return ArtifactCheck(str(path), "onnx", False, str(e), "rn-deploy export model.pt -o " + str(path))
    ort_env = env["onnxruntime"]
    if ort_env.get("version") is None:
        return ArtifactCheck(str(path), "onnx", False, f"onnxruntime {ort_env.get('reason')}", "pip install onnxruntime")
    import onnxruntime as ort

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort_env["providers"]]
    if "CUDAExecutionProvider" in providers and not env["gpus"]:
        providers.remove("CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types per failure
        return ArtifactCheck(str(path), "onnx", False, f"{path}: ONNX Runtime {ort_env['version']} cannot load it "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                             "re-export it with this rn-deploy: rn-deploy export model.pt -o " + str(path))
    precision = "fp16" if weights_fp16(graph) else "fp32"
    return ArtifactCheck(str(path), "onnx", True, f"{precision} ONNX loads with ONNX Runtime {ort_env['version']} "
                         f"({', '.join(sess.get_providers())})")


def check_artifact(path: str | Path, env: dict[str, Any] | None = None) -> ArtifactCheck:
    """Will ``path`` (an engine with its manifest, or an ONNX file) load on this machine?"""
    path = Path(path)
    env = env if env is not None else environment()
    if path.suffix == ".onnx":
        return check_onnx(path, env)
    if path.suffix in (".engine", ".plan") or path.with_name(path.name + ".json").exists():
        return check_engine(path, env)
    if not path.exists():
        return ArtifactCheck(str(path), "unknown", False, f"{path}: no such file", None)
    return ArtifactCheck(str(path), "unknown", False, f"{path}: neither an ONNX model (.onnx) nor an engine (.engine/.plan with "
                         "its .json manifest)", None)


def doctor(paths: Sequence[str | Path] = ()) -> dict[str, Any]:
    """The environment block and one :class:`ArtifactCheck` per path; ``ok`` is False if any cannot load."""
    env = environment()
    checks = [check_artifact(p, env) for p in paths]
    arts = [{**c.to_dict(), "size_range": artifact_sizes(p)} for c, p in zip(checks, paths, strict=True)]
    return {"environment": env, "packages": versions_block(), "artifacts": arts, "ok": all(c.loadable for c in checks)}


def artifact_sizes(path: str | Path) -> str | None:
    """The sizes an ONNX file or engine is accurate at (its config's recorded range, else its training size), or None."""
    from .onnxfile import read_onnx_config
    from .runtime import EngineManifest
    from .sizes import size_range

    try:
        if Path(path).suffix == ".onnx":
            onnx_cfg = read_onnx_config(path)
            cfg = onnx_cfg.to_dict() if onnx_cfg else None
        else:
            cfg = EngineManifest.load(path).config
    except (RnDeployError, OSError, ValueError):
        return None
    return size_range(cfg).describe() if cfg and cfg.get("image_size") else None


def format_doctor(report: dict[str, Any]) -> str:
    """The doctor report for people: one screen."""
    env = report["environment"]
    o, py, drv, t, ort_ = env["os"], env["python"], env["driver"], env["torch"], env["onnxruntime"]

    def ver(d: dict[str, Any]) -> str:
        return d["version"] if d.get("version") else f"- ({d.get('reason')})"

    lines = [
        f"{'os':>14}: {o['system']} {o['release']} {o['machine']}",
        f"{'python':>14}: {py['version']} ({py['executable']})",
        f"{'driver':>14}: {drv['nvidia'] or '-'} (CUDA {drv['cuda'] or '-'})",
        f"{'gpus':>14}: " + ("; ".join(f"{g['index']}: {g['name']} (cc {g['compute_capability']}, {g['memory_gib']} GiB)"
                                        for g in env["gpus"]) or "none visible"),
        f"{'torch':>14}: {ver(t)}" + (f" (CUDA build {t['cuda_build']}, cuda available {t['cuda_available']})" if t.get("version") else ""),
        f"{'onnxruntime':>14}: {ver(ort_)}" + (f" ({', '.join(ort_['providers'])})" if ort_.get("version") else ""),
        f"{'tensorrt':>14}: {ver(env['tensorrt'])}",
        f"{'tensorrt-rtx':>14}: {ver(env['tensorrt_rtx'])}",
    ]
    j = env["jetson"]
    if j:
        lines.append(f"{'jetson':>14}: {j['model']} (L4T {j['l4t']}), power mode {j['power_mode']} (id {j['power_mode_id']}), "
                     f"GPU {j['gpu_freq_mhz']}/{j['gpu_max_freq_mhz']} MHz, CPU max {j['cpu_max_freq_mhz']} MHz")
    lines += format_versions(report.get("packages"))
    for a in report["artifacts"]:
        lines.append(f"{'ok' if a['loadable'] else 'CANNOT LOAD':>14}: {a['path']} ({a['kind']}): {a['detail']}")
        if a["fix"]:
            lines.append(f"{'fix':>14}: {a['fix']}")
        if a.get("size_range"):
            lines.append(f"{'sizes':>14}: {a['size_range']}")
    return "\n".join(lines)


def format_versions(block: dict[str, Any] | None) -> list[str]:
    """:func:`versions_block` for people: the installed versions on one line, then each known-bad combination."""
    if not block:
        return []
    have = ", ".join(f"{k} {v}" for k, v in block["versions"].items() if v is not None)
    return [f"{'packages':>14}: {have}", *(f"{'KNOWN BAD':>14}: {line}" for line in block["known_bad"])]

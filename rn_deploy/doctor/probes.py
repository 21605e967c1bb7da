"""What this machine has: OS, Python, driver and CUDA, GPUs, torch, ONNX Runtime, TensorRT, Jetson; cheap probes that never raise.

:func:`environment` is the one description of a machine: validation and benchmark reports record it so that a
number always says where it was measured. What cannot be read is ``None``.
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
from pathlib import Path
from typing import Any

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


def stubs_owner(module: str, folders: Sequence[str]) -> str | None:
    """``"NAME VERSION"`` of the distribution whose type stubs (``.pyi`` only) fill ``module``'s folders, or None.

    ``tensorrt-stubs`` (README's install, for mypy) writes a ``tensorrt/`` folder of ``.pyi`` files: an importable
    namespace package with no runtime in it, which is not a broken TensorRT.
    """
    from importlib import metadata

    files = [f for d in folders for f in Path(d).rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    if not files or not all(f.suffix == ".pyi" or f.name == "py.typed" for f in files):
        return None
    for dist in metadata.distributions():
        if any(f.parts[:1] == (module,) and f.suffix == ".pyi" for f in dist.files or ()):
            return f"{dist.metadata['Name']} {dist.version}"
    return "a stubs package"


def module_version(module: str) -> tuple[str | None, str | None]:
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
        stubs = stubs_owner(module, list(getattr(mod, "__path__", [])))
        if stubs is not None:
            return None, (f"not installed: only its type stubs ({stubs}: .pyi files for mypy, no runtime); install "
                          f"{module} itself on a machine that can run it")
        return None, f"only an empty '{module}' folder (a failed or partial install); reinstall it"
    return None, "no __version__ (incomplete install?)"


def torch_info() -> dict[str, Any]:
    version, why = module_version("torch")
    if version is None:
        return {"version": None, "reason": why}
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"version": version, "cuda_build": torch.version.cuda, "cudnn": cudnn, "cuda_available": torch.cuda.is_available()}


def onnxruntime_info() -> dict[str, Any]:
    version, why = module_version("onnxruntime")
    if version is None:
        return {"version": None, "reason": why}
    import onnxruntime as ort

    return {"version": version, "providers": list(ort.get_available_providers()), "device": ort.get_device()}


def trt_info() -> dict[str, Any]:
    """Versions of full TensorRT and TensorRT-RTX (or why each is absent)."""
    out: dict[str, Any] = {}
    for key, module in (("tensorrt", "tensorrt"), ("tensorrt_rtx", "tensorrt_rtx_bindings")):
        version, why = module_version(module)
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
    from ..version import __version__

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

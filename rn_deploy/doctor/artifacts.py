"""Will an engine or ONNX file load here: the answer, the exact reason when not, and the command that fixes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, RnDeployError
from ..strictjson import ToDict
from .probes import environment


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
    from ..runtime import rebuild_command

    if m.backend == "tensorrt-rtx":
        cc = env["gpus"][0]["compute_capability"] if env["gpus"] else None
        if cc:
            return rebuild_command(m, targets=[f"sm{cc.replace('.', '')}"])
        return (f"{rebuild_command(m, targets=[])} --target {TARGET_PLACEHOLDER}  ({TARGET_PLACEHOLDER}: fill in the compute "
                "capability of the GPU that will run it, e.g. sm89)")
    return rebuild_command(m) + ("" if env["gpus"] else "  (on the GPU that will run it)")


def check_engine(path: Path, env: dict[str, Any]) -> ArtifactCheck:
    from ..runtime import BACKENDS, EngineManifest, check_compatible, check_engine_file, deserialize_checked

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
    from ..onnxfile import check_onnx_file, graph_precision

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
    precision = graph_precision(graph)
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


def artifact_sizes(path: str | Path) -> str | None:
    """The sizes an ONNX file or engine is accurate at (its config's recorded range, else its training size), or None."""
    from ..onnxfile import read_onnx_config
    from ..runtime import EngineManifest
    from ..sizes import size_range

    try:
        if Path(path).suffix == ".onnx":
            onnx_cfg = read_onnx_config(path)
            cfg = onnx_cfg.to_dict() if onnx_cfg else None
        else:
            cfg = EngineManifest.load(path).config
    except (RnDeployError, OSError, ValueError):
        return None
    return size_range(cfg).describe() if cfg and cfg.get("image_size") else None

"""Engines that travel: hardware/version compatibility options, the manifest, and the preflight that honours them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
import pytest
from click.testing import CliRunner

from rn_deploy.builder import Profile, build_engine
from rn_deploy.cli import main
from rn_deploy.errors import BuildError, EngineCompatibilityError
from rn_deploy.export import export_onnx
from rn_deploy.runtime import EngineManifest, check_compatible, manifest_path
from rn_deploy.runtime.manifest import LEAN_RUNTIME_ENV, host_platform

from .conftest import HAS_CUDA, HAS_TRT, make_checkpoint, needs_rtx, requires, skip

P = Profile((1, 1, 28, 28), (4, 1, 28, 28), (8, 1, 64, 64))


def manifest(**kw: Any) -> EngineManifest:
    """A full-TensorRT manifest as `build` writes it (built on an RTX 3090, cc 8.6, TensorRT 10.3.0.26)."""
    d: dict[str, Any] = dict(
        backend="tensorrt", library_version="10.3.0.26", precision="fp16", strongly_typed=False, fp16_flag=True, targets=[],
        build_gpu={"name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"}, profiles=[], onnx_path="m.onnx",
        onnx_sha256="0" * 64, built_from="m.onnx", inputs=[], outputs=[], build_seconds=1.0, built_at="2026-01-01T00:00:00+00:00",
        options={}, engine_path="m.engine", engine_size=1, engine_sha256="", build_platform=host_platform(),
    )
    d.update(kw)
    return EngineManifest(**d)


def installed(version: str) -> SimpleNamespace:
    """check_compatible reads only the installed library's ``__version__``: the TensorRT we pretend is installed."""
    return SimpleNamespace(__version__=version)


def test_default_engine_is_tied_to_its_gpu_and_exact_version():
    m = manifest()
    check_compatible(m, installed("10.3.0.26"), "8.6")
    with pytest.raises(EngineCompatibilityError, match=r"built for compute capability 8.6, this GPU is 8.9"):
        check_compatible(m, installed("10.3.0.26"), "8.9")
    with pytest.raises(EngineCompatibilityError, match=r"built with tensorrt 10.3.0.26, installed is 10.7.0.23; rebuild"):
        check_compatible(m, installed("10.7.0.23"), "8.6")


@pytest.mark.parametrize("cc", ["8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "12.0"])
def test_ampere_plus_engine_loads_on_any_cc_from_8_0(cc: str):
    check_compatible(manifest(hardware_compat="ampere-plus"), installed("10.3.0.26"), cc)


@pytest.mark.parametrize("cc", ["7.5", "7.0", "6.1"])
def test_ampere_plus_engine_refused_below_8_0(cc: str):
    with pytest.raises(EngineCompatibilityError, match=rf"Ampere-plus engine needs compute capability >= 8.0, this GPU is {cc}; "
                                                       r"rebuild: rn-deploy build m.onnx"):
        check_compatible(manifest(hardware_compat="ampere-plus"), installed("10.3.0.26"), cc)


def test_same_cc_engine_loads_only_on_its_compute_capability():
    m = manifest(hardware_compat="same-cc")
    check_compatible(m, installed("10.3.0.26"), "8.6")
    with pytest.raises(EngineCompatibilityError, match="built for compute capability 8.6, this GPU is 8.0"):
        check_compatible(m, installed("10.3.0.26"), "8.0")


@pytest.mark.parametrize("version", ["10.3.0.26", "10.3.1.1", "10.7.0.23", "10.16.1.11"])
def test_version_compatible_engine_loads_on_later_same_major(version: str):
    check_compatible(manifest(version_compatible=True, lean_runtime="embedded"), installed(version), "8.6")


@pytest.mark.parametrize("version", ["10.2.0.19", "11.0.0.1", "9.3.0.1"])
def test_version_compatible_engine_refused_on_earlier_or_other_major(version: str):
    with pytest.raises(EngineCompatibilityError, match=r"version-compatible engine built with tensorrt 10.3.0.26 loads on 10.3.0.26 "
                                                       rf"or a later 10.x; installed is {version}; rebuild: .*--version-compatible"):
        check_compatible(manifest(version_compatible=True, lean_runtime="embedded"), installed(version), None)


def test_excluded_lean_runtime_needs_the_building_release_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    m = manifest(version_compatible=True, lean_runtime="excluded")
    monkeypatch.delenv(LEAN_RUNTIME_ENV, raising=False)
    check_compatible(m, installed("10.3.0.26"), "8.6")  # the building release runs it itself
    with pytest.raises(EngineCompatibilityError, match=rf"needs the lean runtime of 10.3.0.26: set {LEAN_RUNTIME_ENV}="
                                                       r"/path/to/libnvinfer_lean.so.10 .*now unset"):
        check_compatible(m, installed("10.7.0.23"), "8.6")
    monkeypatch.setenv(LEAN_RUNTIME_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(EngineCompatibilityError, match="missing.so"):
        check_compatible(m, installed("10.7.0.23"), "8.6")
    lib = tmp_path / "libnvinfer_lean.so.10"
    lib.write_bytes(b"\x7fELF")
    monkeypatch.setenv(LEAN_RUNTIME_ENV, str(lib))
    check_compatible(m, installed("10.7.0.23"), "8.6")


def test_engines_never_cross_platforms():
    m = manifest(build_platform="Linux-aarch64" if host_platform() != "Linux-aarch64" else "Linux-x86_64",
                 hardware_compat="ampere-plus", version_compatible=True, lean_runtime="embedded")
    with pytest.raises(EngineCompatibilityError, match=rf"engine built on {m.build_platform}, this machine is {host_platform()}"):
        check_compatible(m, installed("10.3.0.26"), None)
    check_compatible(manifest(backend="tensorrt-rtx", library_version="1.7.1.116", targets=["sm89"], build_gpu=None,
                              build_platform=m.build_platform), installed("1.7.1.116"), "8.9")  # not claimed for TensorRT-RTX


def test_manifest_without_portability_fields_loads_with_defaults(tmp_path: Path):
    d = manifest().to_dict()
    for k in ("hardware_compat", "version_compatible", "lean_runtime", "build_platform"):
        d.pop(k)
    (tmp_path / "old.engine.json").write_text(json.dumps(d))
    m = EngineManifest.load(tmp_path / "old.engine")
    assert (m.hardware_compat, m.version_compatible, m.lean_runtime, m.build_platform) == ("none", False, None, None)
    check_compatible(m, installed("10.3.0.26"), "8.6")


@pytest.fixture(scope="module")
def mnist_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("port")
    ck = make_checkpoint(d / "model.pt", arch="mnist_resnet", n_classes=10, in_channels=1, size=28)
    return Path(export_onnx(ck, d / "model.onnx", verify=False).onnx_path)


@pytest.mark.parametrize("kw,msg", [
    ({"hardware_compat": "ampere-plus"}, "--hardware-compat ampere-plus is a full TensorRT option; TensorRT-RTX engines run on the "
                                         "compute capabilities given with --target"),
    ({"hardware_compat": "same-cc"}, "--hardware-compat same-cc is a full TensorRT option"),
    ({"version_compatible": True}, "--version-compatible is a full TensorRT option; a TensorRT-RTX engine loads only on the "
                                   "TensorRT-RTX release that built it"),
    ({"exclude_lean_runtime": True}, "--exclude-lean-runtime only applies to version-compatible engines"),
    ({"hardware_compat": "turing-plus"}, "hardware compatibility 'turing-plus': choose one of none, ampere-plus, same-cc"),
])
def test_rtx_refuses_what_it_does_not_support_before_building(mnist_onnx: Path, tmp_path: Path, kw: dict[str, Any], msg: str):
    with pytest.raises(BuildError, match=msg) as ei:
        build_engine(mnist_onnx, tmp_path / "x.engine", backend="tensorrt-rtx", precision="fp32", profiles=[P], targets=["sm89"], **kw)
    assert "\n" not in str(ei.value)
    assert not list(tmp_path.iterdir())


def test_cli_refusal_is_one_line_exit_1(mnist_onnx: Path, tmp_path: Path):
    res = CliRunner().invoke(main, ["build", str(mnist_onnx), "-o", str(tmp_path / "x.engine"), "--backend", "tensorrt-rtx",
                                    "--target", "sm89", "--min", "1x1x28x28", "--opt", "1x1x28x28", "--max", "2x1x28x28",
                                    "--version-compatible"])
    assert res.exit_code == 1
    assert res.output.strip().startswith("error: --version-compatible is a full TensorRT option") and res.output.count("\n") == 1
    res = CliRunner().invoke(main, ["build", str(mnist_onnx), "--hardware-compat", "volta-plus"])
    assert res.exit_code == 2 and "volta-plus" in res.output


@needs_rtx
@pytest.mark.trt_rtx
def test_rtx_plain_build_records_portability_in_manifest(mnist_onnx: Path, tmp_path: Path):
    m = build_engine(mnist_onnx, tmp_path / "e.engine", backend="tensorrt-rtx", precision="fp32", profiles=[P], targets=["sm89"])
    on_disk = json.loads(manifest_path(tmp_path / "e.engine").read_text())
    assert on_disk["hardware_compat"] == "none" and on_disk["version_compatible"] is False and on_disk["lean_runtime"] is None
    assert on_disk["build_platform"] == host_platform() and (tmp_path / "e.engine").stat().st_size == m.engine_size > 100_000


@pytest.mark.gpu
@pytest.mark.tensorrt
@requires(HAS_TRT and HAS_CUDA, "needs full TensorRT (pip install tensorrt) and an NVIDIA GPU", kind="tensorrt")
def test_full_tensorrt_ampere_plus_version_compatible_builds_and_loads(mnist_onnx: Path, tmp_path: Path):
    import torch

    from rn_deploy.runtime import load_engine_checked

    if torch.cuda.get_device_capability() < (8, 0):
        skip("of compute capability >= 8.0 here (ampere-plus builds need one)", kind="gpu")
    for exclude in (False, True):
        out = tmp_path / f"vc{exclude}.engine"
        m = build_engine(mnist_onnx, out, backend="tensorrt", precision="fp16", profiles=[P], hardware_compat="ampere-plus",
                         version_compatible=True, exclude_lean_runtime=exclude)
        assert m.hardware_compat == "ampere-plus" and m.version_compatible and m.lean_runtime == ("excluded" if exclude else "embedded")
        _m, _trt, engine = load_engine_checked(out)
        assert engine is not None


def test_ceil_mode_pools_export_in_a_form_older_onnxruntime_reads_alike(tmp_path: Path):
    """ORT 1.23 (the last with Python 3.10 wheels) mis-divides ceil_mode AveragePool at opset <= 18; measured
    rel L2 0.06-0.2 at odd sizes before the rewrite. The 3.10 CI leg runs this on 1.23."""
    import onnxruntime as ort

    ck = make_checkpoint(tmp_path / "model.pt", arch="resnet18", n_classes=5, size=32)
    res = export_onnx(ck, tmp_path / "m.onnx", opset=18)
    pools = [n for n in onnx.load(res.onnx_path).graph.node if n.op_type == "AveragePool"]
    assert len(pools) == 3 and res.opset == 18
    for n in pools:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        assert a["ceil_mode"] == 0 and a["count_include_pad"] == 0 and a["pads"] == [0, 0, 1, 1]
    assert res.passed and max(r.parity.rel_l2 for r in res.verification) < 1e-5, ort.__version__
    assert {(r.height % 2, r.width % 2) for r in res.verification} >= {(1, 1)}  # odd sizes were checked

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from rn_deploy.build import (
    EngineManifest,
    Profile,
    build_engine,
    check_compatible,
    inspect_engine,
    manifest_path,
    profiles_from_sizes,
    read_sizes,
)
from rn_deploy.cli import main
from rn_deploy.errors import BuildError, EngineCompatibilityError, MissingDependencyError, RnDeployError
from rn_deploy.export import export_onnx

from .conftest import HAS_CUDA, HAS_TRT, HAS_TRT_RTX, make_checkpoint, needs_gpu, needs_rtx, requires

P = Profile((1, 3, 32, 32), (4, 3, 96, 96), (8, 3, 256, 256))


@pytest.fixture(scope="module")
def onnx32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("b")
    ck = make_checkpoint(d / "model.pt", arch="resnet18", n_classes=5)
    return Path(export_onnx(ck, d / "model.onnx", verify=False).onnx_path)


@pytest.mark.trt_rtx
@needs_rtx
def test_rtx_builds_fp32_and_fp16_with_several_profiles_and_targets(onnx32: Path, tmp_path: Path):
    p2 = Profile((1, 3, 256, 256), (2, 3, 384, 384), (4, 3, 640, 640))
    m32 = build_engine(onnx32, tmp_path / "f32.engine", backend="tensorrt-rtx", precision="fp32", profiles=[P, p2], targets=["sm86", "sm89"])
    m16 = build_engine(onnx32, tmp_path / "f16.engine", backend="tensorrt-rtx", precision="fp16", profiles=[P, p2], targets=["sm120"])
    for m, path in ((m32, tmp_path / "f32.engine"), (m16, tmp_path / "f16.engine")):
        assert path.stat().st_size == m.engine_size > 1_000_000
        on_disk = json.loads(manifest_path(path).read_text())
        assert on_disk == m.to_dict()
        assert on_disk["backend"] == "tensorrt-rtx" and on_disk["strongly_typed"] and not on_disk["fp16_flag"]
        assert on_disk["profiles"] == [{"input": P.to_dict()}, {"input": p2.to_dict()}]
        assert on_disk["inputs"] == [{"name": "input", "dtype": "float", "shape": [-1, 3, -1, -1]}]
        assert on_disk["outputs"][0]["name"] == "logits"
        assert len(on_disk["onnx_sha256"]) == 64 and on_disk["config"]["arch"] == "resnet18"
    assert m32.targets == ["sm86", "sm89"] and m16.targets == ["sm120"]
    assert m32.precision == "fp32" and m16.precision == "fp16"
    # FP16 weights really are half precision: the engine is clearly smaller.
    assert m16.engine_size < 0.7 * m32.engine_size
    assert Path(m16.built_from).name == "model.fp16.onnx" and "converted" in m16.notes[0]
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.trt_rtx
@needs_rtx
def test_rtx_timing_cache_is_a_noop_said_so(onnx32: Path, tmp_path: Path):
    m = build_engine(onnx32, tmp_path / "e.engine", backend="tensorrt-rtx", precision="fp32", profiles=[P], targets=["sm89"],
                     timing_cache=tmp_path / "tc.bin")
    assert any("no-op" in n for n in m.notes) and not (tmp_path / "tc.bin").exists()


@pytest.mark.trt_rtx
@needs_rtx
def test_sizes_file_profiles_and_cli(onnx32: Path, tmp_path: Path):
    sizes = tmp_path / "sizes.txt"
    sizes.write_text("# seen in prod\n480x640\n64x64\n720x1280\n100x90\n300x300\n")
    assert read_sizes(sizes)[0] == (480, 640)
    (tmp_path / "sizes.json").write_text(json.dumps([[480, 640], "64x64"]))
    assert read_sizes(tmp_path / "sizes.json") == [(480, 640), (64, 64)]
    ps = profiles_from_sizes(read_sizes(sizes), channels=3, batch=(1, 4, 16), bands=2)
    assert ps[0].min == (1, 3, 64, 64) and ps[1].max == (16, 3, 720, 1280) and len(ps) == 2
    res = CliRunner().invoke(main, ["build", str(onnx32), "-o", str(tmp_path / "c.engine"), "--backend", "tensorrt-rtx", "--fp32",
                                    "--sizes-from", str(sizes), "--bands", "2", "--batch", "1,4,16", "--target", "sm89", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert len(d["profiles"]) == 2 and d["profiles"][1]["input"]["max"] == [16, 3, 720, 1280]
    info = inspect_engine(tmp_path / "c.engine")
    assert info["manifest"]["engine_sha256"] == d["engine_sha256"]
    if not HAS_CUDA:
        assert info["layers"] is None and "no CUDA GPU" in info["layers_skipped"]
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "c.engine")])
    assert res.exit_code == 0 and "tensorrt-rtx" in res.output and "profile 1" in res.output


@pytest.mark.parametrize("profile,msg", [
    (Profile((1, 3, 64, 64), (8, 3, 32, 32), (4, 3, 16, 16)), "min <= opt <= max"),
    (Profile((1, 1, 64, 64), (2, 1, 64, 64), (4, 1, 64, 64)), "has 1 channels; the model takes 3"),
    (Profile((1, 3, 16, 16), (2, 3, 64, 64), (4, 3, 64, 64)), "below the model's minimum size 32x32"),
    (Profile((0, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64)), "dimension < 1"),
])
def test_invalid_profiles_fail_before_the_builder(onnx32: Path, tmp_path: Path, profile: Profile, msg: str):
    with pytest.raises(BuildError, match=msg):
        build_engine(onnx32, tmp_path / "x.engine", backend="tensorrt-rtx", profiles=[profile], targets=["sm89"])
    assert not (tmp_path / "x.engine").exists()


def test_profile_parsing_errors():
    with pytest.raises(BuildError, match="rank 3"):
        Profile.parse("1x3x64:2x3x64x64:4x3x64x64")
    with pytest.raises(BuildError, match="MIN:OPT:MAX"):
        Profile.parse("1x3x64x64")
    res = CliRunner().invoke(main, ["build", "m.onnx", "--min", "1x3x64x64"])
    assert res.exit_code == 2 and "go together" in res.output


@pytest.mark.trt_rtx
@needs_rtx
def test_corrupt_onnx_gives_parser_errors_in_one_message(onnx32: Path, tmp_path: Path):
    m = onnx.load(str(onnx32))
    m.graph.node[3].op_type = "NoSuchOp"
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(BuildError, match=r"bad.onnx: the ONNX parser failed: .*NoSuchOp") as ei:
        build_engine(bad, tmp_path / "b.engine", backend="tensorrt-rtx", precision="fp32", profiles=[P], targets=["sm89"])
    assert "\n" not in str(ei.value)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(RnDeployError, match="junk.onnx: not a readable ONNX"):
        build_engine(junk, tmp_path / "j.engine", backend="tensorrt-rtx", profiles=[P], targets=["sm89"])


@pytest.mark.trt_rtx
@needs_rtx
def test_manifest_checks_before_deserialising(onnx32: Path, tmp_path: Path):
    import tensorrt_rtx_bindings as trt

    m = build_engine(onnx32, tmp_path / "e.engine", backend="tensorrt-rtx", precision="fp32", profiles=[P], targets=["sm89"])
    with pytest.raises(EngineCompatibilityError, match="targets sm89, this GPU is sm90; rebuild: rn-deploy build .* --target sm90"):
        check_compatible(m, trt, "9.0")
    newer = EngineManifest(**{**m.to_dict(), "library_version": "99.0.0"})
    with pytest.raises(EngineCompatibilityError, match="built with tensorrt-rtx 99.0.0, installed is"):
        check_compatible(newer, trt, "8.9")
    check_compatible(m, trt, "8.9")  # an Ada GPU with the same library: fine


def test_missing_tensorrt_says_what_to_install(onnx32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # runs everywhere: `import tensorrt` fails as when it is not installed
    with pytest.raises(MissingDependencyError, match="pip install tensorrt"):
        build_engine(onnx32, tmp_path / "t.engine", backend="tensorrt", profiles=[P])


@pytest.mark.gpu
@pytest.mark.tensorrt
@requires(HAS_TRT, "needs full TensorRT (pip install tensorrt)", kind="tensorrt")
@needs_gpu  # checked first
def test_full_tensorrt_build_fp16_and_inspect(onnx32: Path, tmp_path: Path):
    m = build_engine(onnx32, tmp_path / "t.engine", backend="tensorrt", precision="fp16", profiles=[P], timing_cache=tmp_path / "tc")
    assert m.build_gpu is not None and (tmp_path / "tc").stat().st_size > 0
    info = inspect_engine(tmp_path / "t.engine")
    assert info["layers"], info["layers_skipped"]


def _runnable_backend() -> tuple[str, list[str] | None] | None:
    """A TensorRT flavour that can run engines on this machine's GPU, if any."""
    if not HAS_CUDA:
        return None
    import torch

    if HAS_TRT:
        return "tensorrt", None
    major, minor = torch.cuda.get_device_capability()
    if HAS_TRT_RTX and (major, minor) != (9, 0) and major >= 8:  # TensorRT-RTX: Ampere, Ada, Blackwell; not Hopper
        return "tensorrt-rtx", None
    return None


@pytest.mark.gpu
@pytest.mark.tensorrt
@requires(_runnable_backend() is not None, "needs full TensorRT, or TensorRT-RTX on an Ampere/Ada/Blackwell GPU", kind="tensorrt")
@needs_gpu  # checked first
def test_trt_runner_matches_the_reference(onnx32: Path, tmp_path: Path):
    import torch

    from rn_deploy import Engine
    from rn_deploy.metrics import parity
    from rn_deploy.runners import TorchRunner, TrtRunner

    backend, targets = _runnable_backend()  # type: ignore[misc]
    p2 = Profile((1, 3, 257, 257), (2, 3, 300, 300), (4, 3, 400, 400))
    build_engine(onnx32, tmp_path / "e.engine", backend=backend, precision="fp16", profiles=[P, p2], targets=targets)
    ref = TorchRunner(onnx32.with_name("model.pt"))
    for graph in (False, True):
        r = TrtRunner(tmp_path / "e.engine", cuda_graph=graph)
        for shape in ((1, 3, 97, 211), (4, 3, 64, 64), (2, 3, 320, 300)):  # the last one uses the second profile
            x = torch.randn(*shape)
            for _ in range(2):
                out = r.infer(r.prepare(x)).cpu().numpy()
                assert parity(ref.infer(x).numpy(), out).rel_l2 < 2e-2
        assert r.covers((16, 3, 64, 64)) is not None
    eng = Engine.load(tmp_path / "e.engine")
    assert eng.max_batch == 8 and len(eng.predict(torch.randn(10, 3, 64, 64))) == 10

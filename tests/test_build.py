from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from rn_deploy.builder import Profile, build_engine, profiles_from_sizes, read_sizes
from rn_deploy.cli import main
from rn_deploy.errors import BuildError, EngineCompatibilityError, MissingDependencyError, RnDeployError
from rn_deploy.export import export_onnx
from rn_deploy.runtime import EngineManifest, check_compatible, inspect_engine, manifest_path, rtx_runs_on

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
    assert Path(m16.built_from).name == "model.build-fp16.onnx" and "converted" in m16.notes[0]
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
    with pytest.raises(EngineCompatibilityError, match="targets sm89, this GPU is sm86; rebuild: rn-deploy build .* --target sm89,sm86"):
        check_compatible(m, trt, "8.6")
    with pytest.raises(EngineCompatibilityError, match=r"TensorRT-RTX does not run on this GPU \(sm90.*--backend tensorrt"):
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
    if HAS_TRT_RTX and rtx_runs_on(f"{major}.{minor}"):  # the one GPU-family rule, from the installed TensorRT-RTX
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


# --------------------------------------------------------------------------------------------
# Issue 12: artifacts that say what they are
# --------------------------------------------------------------------------------------------

Q = Profile((1, 1, 28, 28), (2, 1, 28, 28), (4, 1, 64, 64))  # 1-channel, down to the 28 px training size


@pytest.fixture(scope="module")
def mnist_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 1-channel net trained (here: random weights) at 28 px, like Fashion-MNIST."""
    d = tmp_path_factory.mktemp("m")
    ck = make_checkpoint(d / "model.pt", arch="mnist_cnn", n_classes=10, in_channels=1, size=28)
    return Path(export_onnx(ck, d / "model.onnx").onnx_path)


def _set_min_size(src: Path, dst: Path, value: int) -> Path:
    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key == "rn_deploy.min_size":
            p.value = str(value)
    onnx.save(m, str(dst))
    return dst


@needs_rtx
def test_a_net_trained_at_28px_builds_validates_and_serves_at_28px(tmp_path: Path):
    """resnet18 at 28 px used to be refused ("below the model's minimum size 32"); its ONNX is exact there."""
    import numpy as np

    from rn_deploy import Engine
    from rn_deploy.validate import run_validation

    ck = make_checkpoint(tmp_path / "model.pt", arch="resnet18", n_classes=10, in_channels=1, size=28)
    res = export_onnx(ck, tmp_path / "model.onnx")
    assert res.min_size <= 28
    m = build_engine(tmp_path / "model.onnx", tmp_path / "e.engine", backend="tensorrt-rtx", precision="fp32", profiles=[Q],
                     targets=["sm86"])
    assert m.input_profiles == [Q]
    rep, _ = run_validation(ck, onnx_path=tmp_path / "model.onnx", backends=["ort-cpu"], sizes=[(28, 28)], batches=[2],
                            out_dir=None, warmup=0, iters=1)
    assert rep.passed and [(c.height, c.width) for c in rep.cells if c.skipped is None] == [(28, 28)]
    with Engine.load(tmp_path / "model.onnx", provider="cpu") as eng:
        preds = eng.predict([np.full((28, 28, 1), 128, np.uint8)] * 2)
    assert len(preds) == 2 and 0 <= preds[0].index < 10
    # The declared minimum still guards: a model that says 40 refuses a 28 px profile before the builder.
    with pytest.raises(BuildError, match="below the model's minimum size 40x40"):
        build_engine(_set_min_size(tmp_path / "model.onnx", tmp_path / "m40.onnx", 40), tmp_path / "x.engine",
                     backend="tensorrt-rtx", profiles=[Q], targets=["sm86"])


@needs_rtx
def test_manifest_provenance_fp16_cache_by_digest_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import hashlib
    import os

    from rn_deploy.builder import fp16_source_digest

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    monkeypatch.chdir(tmp_path)
    export_onnx(make_checkpoint(tmp_path / "a.pt", arch="mnist_cnn", n_classes=10, in_channels=1, size=28, seed=1),
                tmp_path / "model.onnx", verify=False)
    m1 = build_engine("model.onnx", "e.engine", backend="tensorrt-rtx", precision="fp16", profiles=[Q], targets=["sm89"])
    half = tmp_path / "model.build-fp16.onnx"
    assert m1.onnx_path == str(tmp_path / "model.onnx") and m1.engine_path == str(tmp_path / "e.engine")
    assert m1.built_from == str(half) and Path(m1.built_from).is_absolute()
    assert m1.onnx_sha256 == sha(tmp_path / "model.onnx") and m1.built_from_sha256 == sha(half) != m1.onnx_sha256
    assert fp16_source_digest(half) == m1.onnx_sha256
    # Another model under the same name, its FP16 copy made *earlier* than the stale one's mtime: converted afresh.
    export_onnx(make_checkpoint(tmp_path / "b.pt", arch="mnist_cnn", n_classes=10, in_channels=1, size=28, seed=2),
                tmp_path / "model.onnx", verify=False)
    os.utime(half, (half.stat().st_atime, (tmp_path / "model.onnx").stat().st_mtime + 100))
    m2 = build_engine("model.onnx", "e2.engine", backend="tensorrt-rtx", precision="fp16", profiles=[Q], targets=["sm89"])
    assert m2.onnx_sha256 == sha(tmp_path / "model.onnx") != m1.onnx_sha256
    assert fp16_source_digest(half) == m2.onnx_sha256 and m2.built_from_sha256 == sha(half) != m1.built_from_sha256
    # Same source again: the cached copy is reused (same bytes).
    m3 = build_engine("model.onnx", "e3.engine", backend="tensorrt-rtx", precision="fp16", profiles=[Q], targets=["sm89"])
    assert m3.built_from_sha256 == m2.built_from_sha256


@needs_rtx
def test_fp32_engines_clear_tf32_and_the_manifest_records_flags(mnist_onnx: Path, tmp_path: Path):
    m32 = build_engine(mnist_onnx, tmp_path / "f32.engine", backend="tensorrt-rtx", precision="fp32", profiles=[Q], targets=["sm89"])
    assert "TF32" not in m32.builder_flags
    on_disk = json.loads(manifest_path(tmp_path / "f32.engine").read_text())
    assert on_disk["builder_flags"] == m32.builder_flags
    m16 = build_engine(mnist_onnx, tmp_path / "f16.engine", backend="tensorrt-rtx", precision="fp16", profiles=[Q], targets=["sm89"])
    assert "TF32" in m16.builder_flags  # the library default, left alone where precision is not FP32


@needs_rtx
def test_min_opt_max_is_profile_0_and_profiles_follow_in_order(mnist_onnx: Path, tmp_path: Path):
    res = CliRunner().invoke(main, ["build", str(mnist_onnx), "-o", str(tmp_path / "p.engine"), "--backend", "tensorrt-rtx", "--fp32",
                                    "--target", "sm89", "--profile", "1x1x64x64:2x1x96x96:4x1x128x128",
                                    "--min", "1x1x28x28", "--opt", "2x1x28x28", "--max", "4x1x64x64",
                                    "--profile", "1x1x128x128:1x1x160x160:2x1x256x256", "--json"])
    assert res.exit_code == 0, res.output
    got = [Profile.from_dict(p["input"]) for p in json.loads(res.stdout)["profiles"]]
    assert got == [Q, Profile.parse("1x1x64x64:2x1x96x96:4x1x128x128"), Profile.parse("1x1x128x128:1x1x160x160:2x1x256x256")]


def test_sizes_bands_leave_no_gap_between_the_smallest_and_largest_size():
    from rn_deploy.builder import sizes_coverage

    seen = [(64, 64), (100, 90), (90, 700), (300, 300), (480, 640), (720, 1280), (1000, 120), (64, 64), (300, 300)]
    for bands in (1, 2, 3, 4):
        ps = profiles_from_sizes(seen, channels=3, batch=(1, 4, 16), bands=bands)
        assert len(ps) == min(bands, len(seen))
        for p in ps:
            p.check(3, None, "t")  # min <= opt <= max on every axis
        for h in range(64, 1001, 13):
            for w in range(64, 1281, 17):
                assert any(p.covers((4, 3, h, w)) for p in ps), (bands, h, w)
        assert sizes_coverage(ps, seen).endswith("covered") and "9/9 sizes seen" in sizes_coverage(ps, seen)
    gappy = [Profile((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 100, 100)), Profile((1, 3, 300, 300), (1, 3, 400, 400), (1, 3, 720, 1280))]
    assert "NOT covered" in sizes_coverage(gappy, [(64, 64), (720, 1280)])


@needs_rtx
def test_sizes_from_file_build_logs_its_coverage(mnist_onnx: Path, tmp_path: Path):
    sizes = tmp_path / "sizes.txt"
    sizes.write_text("28x28\n40x200\n200x40\n64x64\n")
    res = CliRunner().invoke(main, ["build", str(mnist_onnx), "-o", str(tmp_path / "s.engine"), "--backend", "tensorrt-rtx", "--fp32",
                                    "--target", "sm89", "--sizes-from", str(sizes), "--bands", "2", "--batch", "1,2,4", "--json"])
    assert res.exit_code == 0, res.output
    assert "coverage: 4/4 sizes seen are inside a profile; every size from 28x28 to 200x200 is covered" in res.stderr
    ps = [Profile.from_dict(p["input"]) for p in json.loads(res.stdout)["profiles"]]
    assert any(p.covers((1, 1, 150, 150)) for p in ps)  # between the sizes seen, in no band of its own


def test_the_tensorrt_rtx_gpu_family_rule_lives_in_one_place():
    from rn_deploy.runtime import rtx_targets

    targets = rtx_targets()
    assert {"sm75", "sm80", "sm86", "sm89", "sm120"} <= set(targets)
    assert rtx_runs_on("8.9") and rtx_runs_on("12.0") and rtx_runs_on("7.5")
    assert not rtx_runs_on("9.0") and not rtx_runs_on("8.7") and not rtx_runs_on("10.0")
    if HAS_TRT_RTX:
        import tensorrt_rtx_bindings as trt

        assert targets == [k.lower() for k in trt.ComputeCapability.__members__ if k.startswith("SM")]
    demo = (Path(__file__).resolve().parent.parent / "rn_deploy" / "demo.py").read_text()
    assert "rtx_runs_on" in demo and "get_device_capability()[0] != 9" not in demo


@needs_rtx
def test_rebuild_hint_is_a_full_command_that_runs(mnist_onnx: Path, tmp_path: Path):
    import shlex

    import tensorrt_rtx_bindings as trt

    p1 = Profile.parse("1x1x64x64:2x1x96x96:4x1x128x128")
    m = build_engine(mnist_onnx, tmp_path / "h.engine", backend="tensorrt-rtx", precision="fp32", profiles=[Q, p1],
                     targets=["sm89"], builder_opt_level=1)
    with pytest.raises(EngineCompatibilityError) as ei:
        check_compatible(m, trt, "8.6")
    cmd = shlex.split(str(ei.value).split("rebuild: ", 1)[1])
    assert cmd[:2] == ["rn-deploy", "build"] and "--fp32" in cmd and cmd[cmd.index("--target") + 1] == "sm89,sm86"
    res = CliRunner().invoke(main, cmd[1:] + ["--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["profiles"] == m.profiles and again["precision"] == "fp32" and again["targets"] == ["sm89", "sm86"]
    assert again["options"]["builder_opt_level"] == 1
    check_compatible(EngineManifest(**again), trt, "8.6")  # the rebuilt engine runs there
    # Targets this TensorRT-RTX does not know never reach the command; Hopper names full TensorRT.
    odd = EngineManifest(**{**m.to_dict(), "targets": ["sm89", "sm999"], "library_version": "0.0.1"})
    with pytest.raises(EngineCompatibilityError, match="--target sm89 --opt-level 1$"):
        check_compatible(odd, trt, None)
    with pytest.raises(EngineCompatibilityError, match=r"does not run on this GPU \(sm90.*--backend tensorrt --fp32 --min 1x1x28x28"):
        check_compatible(m, trt, "9.0")


def test_an_onnx_that_is_no_classifier_is_refused_at_build_in_one_line(tmp_path: Path):
    """A foreign ONNX is built when it has one image input and one (batch, classes) output (tests/test_foreign_onnx.py);
    this one's output is an image."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "foreign.onnx"))
    with pytest.raises(RnDeployError, match=r"foreign.onnx: output 'y' has shape \['n', 3, 'h', 'w'\], not \(batch, classes\)") as ei:
        build_engine(tmp_path / "foreign.onnx", tmp_path / "f.engine", backend="tensorrt-rtx", profiles=[P], targets=["sm89"])
    assert "\n" not in str(ei.value) and not (tmp_path / "f.engine").exists()
    res = CliRunner().invoke(main, ["build", str(tmp_path / "foreign.onnx"), "--backend", "tensorrt-rtx", "--target", "sm89",
                                    "--min", "1x3x8x8", "--opt", "1x3x8x8", "--max", "1x3x8x8"])
    assert res.exit_code == 1 and "not (batch, classes)" in res.output and "Traceback" not in res.output


@needs_rtx
def test_a_refused_profile_is_an_error_not_a_silent_engine(mnist_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Fake: TensorRT-RTX's add_optimization_profile answering -1 (its documented refusal), which no valid profile
    triggers here; the build must stop there, not write an engine that lacks the profile."""
    import tensorrt_rtx_bindings as trt

    monkeypatch.setattr(trt.IBuilderConfig, "add_optimization_profile", lambda self, prof: -1)
    with pytest.raises(BuildError, match=r"refused profile 0 \(1x1x28x28:2x1x28x28:4x1x64x64\)"):
        build_engine(mnist_onnx, tmp_path / "r.engine", backend="tensorrt-rtx", precision="fp32", profiles=[Q], targets=["sm89"])
    assert not (tmp_path / "r.engine").exists()

"""Digests a check relies on are recorded where the checked file cannot change them, and cover every file read (issue 32 item 10).

Each test names the bug it catches on the code before the fix (planted back and seen failing): an FP16 build copy
trusted on a digest inside itself, an empty engine digest taken as "nothing to check", external data outside the
model's folder read and hashed, validate hashing only ``NAME.onnx.data``, and ``--allow-skip`` excusing an artifact
the runner refuses for what is in the artifact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from rn_deploy import names
from rn_deploy.builder import ensure_fp16_onnx, fp16_copy_path, fp16_record_path
from rn_deploy.cli import main
from rn_deploy.errors import EngineCompatibilityError, RnDeployError
from rn_deploy.export import export_onnx
from rn_deploy.onnxfile import check_onnx_file, onnx_sha256
from rn_deploy.runners import ArtifactUnsupported, OrtRunner, RunnerUnavailable
from rn_deploy.runtime import EngineManifest, check_engine_file, manifest_path
from rn_deploy.runtime.manifest import host_platform
from rn_deploy.validate import describe_artifact

from .conftest import HAS_TRT_RTX, make_checkpoint, requires


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-class mnist_cnn checkpoint, its FP32 ONNX inline and with external data, and a 2-class MNIST-PNG test split."""
    d = tmp_path_factory.mktemp("digests")
    ck = make_checkpoint(d / "model.pt", arch="mnist_cnn", n_classes=2, in_channels=1, size=28)
    inline = Path(export_onnx(ck, d / "model.onnx", verify=False).onnx_path)
    ext = Path(export_onnx(ck, d / "ext" / "model.onnx", external_data=True, verify=False).onnx_path)
    rng = np.random.default_rng(0)
    for split in ("training", "testing"):
        for k in range(2):
            (d / "data" / split / str(k)).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(d / "data" / split / str(k) / f"{i}.png")
    return {"dir": d, "ck": ck, "onnx": inline, "ext": ext, "data": d / "data"}


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([names.OUTPUT], {names.INPUT: x})[0]


def test_an_edited_fp16_build_copy_is_converted_again(model: dict[str, Path], tmp_path: Path):
    """Before: the copy was reused when the FP32 digest *inside it* matched, so a copy whose weights were changed
    afterwards (metadata kept) was built from. Now build records the copy's own digest beside it and converts again."""
    src = tmp_path / "model.onnx"
    src.write_bytes(model["onnx"].read_bytes())
    half = ensure_fp16_onnx(src, lambda _s: None)
    assert half == fp16_copy_path(src)
    rec = json.loads(fp16_record_path(half).read_text())
    assert rec["source_sha256"] == onnx_sha256(src) and rec["sha256"] == onnx_sha256(half)
    assert ensure_fp16_onnx(src, lambda _s: None) == half and onnx_sha256(half) == rec["sha256"]  # unchanged: reused
    m = onnx.load(str(half))
    w = next(t for t in m.graph.initializer if t.data_type == TensorProto.FLOAT16 and len(t.dims) == 4)
    w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w), w.name))  # edited, its metadata left as it was
    onnx.save(m, str(half))
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    ref = _logits(src, x)
    assert np.linalg.norm(_logits(half, x) - ref) / np.linalg.norm(ref) > 0.05  # the edit matters
    got = ensure_fp16_onnx(src, lambda _s: None)
    assert np.linalg.norm(_logits(got, x) - ref) / np.linalg.norm(ref) < 1e-2  # converted afresh from the FP32 model
    assert json.loads(fp16_record_path(got).read_text())["sha256"] == onnx_sha256(got)


def _fake_engine(tmp_path: Path, digest: str, **kw: object) -> Path:
    """An engine file (TensorRT-RTX magic) and a manifest as build writes it for the installed TensorRT-RTX, with the
    ``engine_sha256`` given: every check before deserialisation passes except the digest's."""
    from rn_deploy.runtime.manifest import import_backend

    eng = tmp_path / "m.engine"
    eng.write_bytes(b"vtrt" + bytes(60))
    m = EngineManifest(backend="tensorrt-rtx", library_version=str(import_backend("tensorrt-rtx").__version__), precision="fp32",
                       strongly_typed=True, fp16_flag=False, targets=[], build_gpu=None,
                       profiles=[{"input": {"min": [1, 1, 28, 28], "opt": [1, 1, 28, 28], "max": [2, 1, 28, 28]}}],
                       onnx_path="m.onnx", onnx_sha256="0" * 64, built_from="m.onnx",
                       inputs=[{"name": "input", "dtype": "float", "shape": [-1, 1, -1, -1]}],
                       outputs=[{"name": "logits", "dtype": "float", "shape": [-1, 2]}], build_seconds=1.0, built_at="",
                       options={}, engine_path=str(eng), engine_size=64, engine_sha256=digest, build_platform=host_platform(),
                       **kw)  # type: ignore[arg-type]
    manifest_path(eng).write_text(json.dumps(m.to_dict()))
    return eng


@requires(HAS_TRT_RTX, "TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)")
@pytest.mark.parametrize("digest", ["", "not-a-digest"])
def test_an_engine_manifest_without_a_valid_digest_is_refused(tmp_path: Path, digest: str):
    """Before: ``engine_sha256: ""`` skipped the comparison, and a version-compatible engine was then deserialised with
    its host code allowed on a digest that was never checked. Now it is refused before anything loads; inspect says so."""
    eng = _fake_engine(tmp_path, digest, version_compatible=True, lean_runtime="embedded")
    with pytest.raises(EngineCompatibilityError, match=r"its manifest records no valid engine_sha256 .*rebuild: rn-deploy build"):
        check_engine_file(eng)
    r = CliRunner().invoke(main, ["inspect", str(eng)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "no valid engine_sha256" in r.output, r.output
    right = _fake_engine(tmp_path, hashlib.sha256(eng.read_bytes()).hexdigest(), version_compatible=True, lean_runtime="embedded")
    assert check_engine_file(right)[0].engine_sha256 == hashlib.sha256(eng.read_bytes()).hexdigest()  # a valid one passes


@pytest.mark.parametrize("where", ["escaping", "absolute"])
def test_external_data_outside_the_models_folder_is_refused_by_every_reader(model: dict[str, Path], tmp_path: Path, where: str):
    """Before: onnxfile loaded and hashed ``../../outside.bin`` or ``/abs/path`` (only export-triton refused it), so
    validate/eval/build read a file that does not travel with the model. Now the checked load refuses it in one line."""
    d = tmp_path / "a" / "b"
    d.mkdir(parents=True)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((model["ext"].parent / "model.onnx.data").read_bytes())
    m = onnx.load(str(model["ext"]), load_external_data=False)
    loc = "../../outside.bin" if where == "escaping" else str(outside)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = loc
    bad = d / "model.onnx"
    onnx.save(m, str(bad))
    msg = f"{bad}: an initializer's external data location {loc!r} is not a file inside {d}"
    for read in (check_onnx_file, onnx_sha256):
        with pytest.raises(RnDeployError, match="^" + msg.replace(".", r"\.").replace("(", r"\(")):
            read(bad)
    r = CliRunner().invoke(main, ["validate", "--checkpoint", str(model["ck"]), "--onnx", str(bad), "--out", str(tmp_path / "v")])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith(f"error: {msg}"), r.output
    assert not (tmp_path / "v").exists()


def test_validate_hashes_every_external_data_file_whatever_its_name(model: dict[str, Path], tmp_path: Path):
    """Before: describe_artifact hashed only ``NAME.onnx.data``: weights in ``weights.bin`` were not in the report, and
    a changed ``weights.bin`` left the report's digests as they were."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "weights.bin").write_bytes((model["ext"].parent / "model.onnx.data").read_bytes())
    m = onnx.load(str(model["ext"]), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "weights.bin"
    onnx.save(m, str(d / "model.onnx"))
    first = describe_artifact(d / "model.onnx", "onnx")
    assert first["external_data"] == [{"location": "weights.bin", "path": str(d / "weights.bin"),
                                       "sha256": hashlib.sha256((d / "weights.bin").read_bytes()).hexdigest()}]
    assert first["onnx_sha256"] == onnx_sha256(d / "model.onnx")
    w = np.frombuffer((d / "weights.bin").read_bytes(), np.float32)
    (d / "weights.bin").write_bytes((-w).tobytes())
    again = describe_artifact(d / "model.onnx", "onnx")
    assert again["sha256"] == first["sha256"]  # the .onnx did not change; its weights did, and the report says so
    assert again["external_data"][0]["sha256"] != first["external_data"][0]["sha256"] and again["onnx_sha256"] != first["onnx_sha256"]


def test_allow_skip_excuses_only_what_this_machine_cannot_run(model: dict[str, Path], tmp_path: Path):
    """Before: OrtRunner refused float64 logits with RunnerUnavailable, the "not on this machine" skip, so
    `eval --allow-skip` passed (exit 0) and `validate --allow-skip` accepted a model no machine can run here. Now the
    refusal is ArtifactUnsupported: a failure whatever --allow-skip says; no GPU stays a skip."""
    m = onnx.load(str(model["onnx"]))
    out = m.graph.output[0]
    m.graph.node.append(helper.make_node("Cast", [out.name], ["logits64"], to=TensorProto.DOUBLE))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("logits64", TensorProto.DOUBLE, ["batch", 2]))
    f64 = tmp_path / "f64.onnx"
    onnx.save(m, str(f64))
    with pytest.raises(ArtifactUnsupported, match=r"tensor type tensor\(double\) is not supported"):
        OrtRunner(f64)
    assert not issubclass(ArtifactUnsupported, RunnerUnavailable)
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(model["ck"]), "--onnx", str(f64), "--dataset", "mnist", "--data",
                                  str(model["data"]), "--allow-skip", "--out", str(tmp_path / "e"), "--json"])
    assert r.exit_code == 1, r.output
    row = json.loads(r.stdout)["artifacts"][1]
    assert row["ran"] is False and row["passed"] is False and "tensor(double)" in row["failures"][0]
    r = CliRunner().invoke(main, ["validate", "--checkpoint", str(model["ck"]), "--onnx", str(f64), "--allow-skip", "--sizes", "28",
                                  "--batch", "1", "--warmup", "0", "--iters", "1", "--out", str(tmp_path / "v")])
    assert r.exit_code == 1 and "tensor(double)" in r.output.strip().splitlines()[-1], r.output
    import torch

    if not (torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()):
        with pytest.raises(RunnerUnavailable):  # what this machine cannot run stays the skip --allow-skip excuses
            OrtRunner(model["onnx"], provider="cuda")

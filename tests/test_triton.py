from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from rn_deploy.cli import main
from rn_deploy.errors import RnDeployError
from rn_deploy.export import export_onnx
from rn_deploy.triton import export_triton

from .conftest import make_checkpoint, requires

try:
    from tritonclient.grpc import model_config_pb2
except ImportError:
    model_config_pb2 = None
pytestmark = requires(model_config_pb2 is not None, "tritonclient not installed (pip install 'tritonclient[grpc]')")


def _parse(folder: Path):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("t")
    ck = make_checkpoint(d / "model.pt", arch="mnist_cnn", n_classes=4, in_channels=1, size=28)
    return Path(export_onnx(ck, d / "model.onnx", verify=False).onnx_path)


def test_onnx_repository_parses_with_tritons_schema(onnx_model: Path, tmp_path: Path):
    res = CliRunner().invoke(main, ["export-triton", str(onnx_model), "--repo", str(tmp_path / "repo"), "--name", "fm", "--max-batch", "16"])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "repo" / "fm"
    cfg = _parse(folder)
    assert cfg.name == "fm" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    assert cfg.input[0].name == "input" and list(cfg.input[0].dims) == [1, -1, -1]
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert cfg.output[0].name == "logits" and list(cfg.output[0].dims) == [4] and cfg.output[0].label_filename == "labels.txt"
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_model.read_bytes()
    assert (folder / "labels.txt").read_text().splitlines() == ["0", "1", "2", "3"]
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]  # no staging left
    with pytest.raises(RnDeployError, match="already exists; pass --force"):
        export_triton(onnx_model, tmp_path / "repo", "fm")
    export_triton(onnx_model, tmp_path / "repo", "fm", max_batch=2, force=True)
    assert _parse(folder).max_batch_size == 2


def _fake_tensorrt_manifest(onnx_model: Path, engine: Path) -> dict:
    return {"format": "rn-deploy-engine/1", "backend": "tensorrt", "library_version": "10.13.0", "precision": "fp16",
                "strongly_typed": False, "fp16_flag": True, "targets": [], "build_gpu": {"name": "x", "compute_capability": "8.9"},
                "profiles": [{"input": {"min": [1, 1, 28, 28], "opt": [8, 1, 64, 64], "max": [24, 1, 512, 512]}}],
                "onnx_path": str(onnx_model), "onnx_sha256": "", "built_from": str(onnx_model),
                "inputs": [{"name": "input", "dtype": "float", "shape": [-1, 1, -1, -1]}],
                "outputs": [{"name": "logits", "dtype": "float", "shape": [-1, 4]}], "build_seconds": 1.0, "built_at": "",
                "options": {}, "engine_path": str(engine), "engine_size": 28, "engine_sha256": "",
                "config": {"class_names": ["a", "b", "c", "d"], "mean": [0.3], "std": [0.2], "image_size": [28, 28]}, "notes": []}


def test_plan_repository_from_fake_tensorrt_manifest(onnx_model: Path, tmp_path: Path):
    """Full TensorRT cannot be installed here: a stand-in engine file with a tensorrt manifest (as
    `rn-deploy build --backend tensorrt` writes it) checks the plan branch of the config."""
    engine = tmp_path / "fake_tensorrt.engine"
    engine.write_bytes(b"ftrt" + bytes(60))  # a plan's magic, then nothing: a stand-in
    manifest = _fake_tensorrt_manifest(onnx_model, engine)
    engine.with_name(engine.name + ".json").write_text(json.dumps(manifest))
    folder = export_triton(engine, tmp_path / "repo", "plan")
    cfg = _parse(folder)
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 24 and (folder / "1" / "model.plan").exists()
    assert (folder / "labels.txt").read_text().split() == ["a", "b", "c", "d"]
    with pytest.raises(RnDeployError, match="exceeds the engine's largest profile batch 24"):
        export_triton(engine, tmp_path / "repo", "plan2", max_batch=64)
    manifest["backend"] = "tensorrt-rtx"
    engine.with_name(engine.name + ".json").write_text(json.dumps(manifest))
    with pytest.raises(RnDeployError, match="tensorrt_plan backend runs full-TensorRT engines only"):
        export_triton(engine, tmp_path / "repo", "rtx")


def test_external_data_travels_with_the_onnx(onnx_model: Path, tmp_path: Path):
    ck = onnx_model.with_name("model.pt")
    ext = Path(export_onnx(ck, tmp_path / "ext" / "model.onnx", external_data=True, verify=False).onnx_path)
    Path(str(ext) + ".data").chmod(0o600)  # as onnx writes it
    folder = export_triton(ext, tmp_path / "repo", "ext")
    # Triton's documented directory form for a model of several files: 1/model.onnx/ holding the graph and its data.
    assert sorted(str(p.relative_to(folder / "1")) for p in (folder / "1").rglob("*") if p.is_file()) == [
        "model.onnx/model.onnx", "model.onnx/model.onnx.data"]
    for p in folder.rglob("*"):
        assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), p  # readable by the server's user
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "1" / "model.onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})[0].shape == (2, 4)
    shutil.rmtree(tmp_path / "repo")


def _model_dims(onnx_path: Path) -> list[int]:
    import onnx

    d = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [x.dim_value if x.HasField("dim_value") else -1 for x in d]


def assert_triton_accepts_dims(cfg, model_dims: list[int]) -> None:
    """Triton's documented rule (model_configuration.md, "Inputs and Outputs"): with max_batch_size > 0 the dims leave
    out the batch axis; a dim is -1 only where the model's is variable, and a fixed model dim must be given as that size
    (the onnxruntime backend refuses "model expects dims [...] but the model configuration specifies [...]")."""
    assert cfg.max_batch_size > 0 and model_dims[0] == -1
    conf = list(cfg.input[0].dims)
    assert len(conf) == len(model_dims) - 1
    for c, m in zip(conf, model_dims[1:], strict=True):
        assert c == m, (conf, model_dims)


def test_static_export_gets_its_fixed_dims(onnx_model: Path, tmp_path: Path):
    ck = onnx_model.with_name("model.pt")
    static = Path(export_onnx(ck, tmp_path / "static.onnx", static_size=(40, 36), verify=False).onnx_path)
    cfg = _parse(export_triton(static, tmp_path / "repo", "static"))
    assert list(cfg.input[0].dims) == [1, 40, 36]
    assert_triton_accepts_dims(cfg, _model_dims(static))
    assert_triton_accepts_dims(_parse(export_triton(onnx_model, tmp_path / "repo", "dyn")), _model_dims(onnx_model))
    meta = json.loads((tmp_path / "repo" / "static" / "rn-deploy.json").read_text())
    assert meta["preprocessing"]["size_policy"].startswith("fixed: resize every image to exactly 40x36")


def test_multi_profile_plan_lists_every_profile_and_takes_the_largest_batch(onnx_model: Path, tmp_path: Path):
    engine = tmp_path / "fake_tensorrt.engine"
    engine.write_bytes(b"ftrt" + bytes(60))  # a plan's magic, then nothing: a stand-in
    manifest = _fake_tensorrt_manifest(onnx_model, engine)
    manifest["profiles"] = [{"input": {"min": [1, 1, 28, 28], "opt": [8, 1, 64, 64], "max": [8, 1, 128, 128]}},
                            {"input": {"min": [1, 1, 128, 128], "opt": [16, 1, 256, 256], "max": [24, 1, 512, 512]}}]
    engine.with_name(engine.name + ".json").write_text(json.dumps(manifest))
    cfg = _parse(export_triton(engine, tmp_path / "repo", "plan"))
    assert cfg.max_batch_size == 24
    assert len(cfg.instance_group) == 1 and list(cfg.instance_group[0].profile) == ["0", "1"]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    with pytest.raises(RnDeployError, match="runs on the GPU only; --kind cpu is for ONNX"):
        export_triton(engine, tmp_path / "repo", "plan_cpu", kind="cpu")
    manifest["outputs"][0]["dtype"] = "fp8"
    engine.with_name(engine.name + ".json").write_text(json.dumps(manifest))
    with pytest.raises(RnDeployError, match="tensor 'logits' has type fp8, which has no Triton data type"):
        export_triton(engine, tmp_path / "repo", "fp8")


def test_kind_cpu_for_onnx_and_unknown_onnx_dtypes_are_errors(onnx_model: Path, tmp_path: Path):
    import onnx

    cfg = _parse(export_triton(onnx_model, tmp_path / "repo", "cpu", kind="cpu"))
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    m = onnx.load(str(onnx_model))
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.COMPLEX64
    onnx.save(m, str(tmp_path / "odd.onnx"))
    # refused where every consumer reads the graph (rn_deploy.onnxfile.onnx_interface), before Triton's type table
    with pytest.raises(RnDeployError, match="input 'input' is complex64 of rank 4, not an image"):
        export_triton(tmp_path / "odd.onnx", tmp_path / "repo", "odd")


def test_folder_carries_its_preprocessing_in_parameters_and_rn_deploy_json(onnx_model: Path, tmp_path: Path):
    from rn_deploy.checkpoint import load_checkpoint

    ck = load_checkpoint(onnx_model.with_name("model.pt")).config
    res = CliRunner().invoke(main, ["export-triton", str(onnx_model), "--repo", str(tmp_path / "repo"), "--name", "fm", "--json"])
    assert res.exit_code == 0, res.output

    def no_constants(c: str) -> None:
        raise AssertionError(f"non-strict JSON constant {c}")

    out = json.loads(res.stdout, parse_constant=no_constants)
    folder = tmp_path / "repo" / "fm"
    assert out["folder"] == str(folder) and out["format"] == "rn-deploy-triton/1"
    assert json.loads((folder / "rn-deploy.json").read_text()) == {k: v for k, v in out.items() if k != "folder"}
    pre = out["preprocessing"]
    assert pre["mean"] == ck.mean and pre["std"] == ck.std and pre["channel_order"] == "L" and pre["layout"] == "NCHW"
    assert abs(pre["scale"] - 1 / 255) < 1e-12 and pre["train_hw"] == [28, 28]
    assert pre["min_hw"][0] <= 28 and pre["max_hw"] == [None, None] and pre["size_policy"].startswith("resize every image to the training size 28x28")
    assert "no size range is recorded" in pre["size_policy"] and pre["size_range"] is None
    assert out["class_names"] == ck.class_names and out["max_batch_size"] == 32 and out["kind"] == "gpu"
    cfg = _parse(folder)
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(params["mean"]) == ck.mean and json.loads(params["std"]) == ck.std
    assert params["channel_order"] == "L" and params["scale"] == "1/255" and params["size_policy"] == pre["size_policy"]
    assert json.loads(params["class_names"]) == ck.class_names


@pytest.mark.parametrize("where", ["escaping", "absolute"])
def test_external_data_outside_the_model_folder_is_refused_and_nothing_written(onnx_model: Path, tmp_path: Path, where: str):
    """Planted: an initializer whose `location` is ../../outside.bin or /etc/passwd (issue 24 item 6): today's code
    copied the file into (or wrote outside) the repository; now exit 1, one line, no repository folder."""
    import onnx

    ck = onnx_model.with_name("model.pt")
    ext = Path(export_onnx(ck, tmp_path / "a" / "b" / "model.onnx", external_data=True, verify=False).onnx_path)
    secret = tmp_path / "outside.bin"
    secret.write_bytes((ext.parent / "model.onnx.data").read_bytes())
    m = onnx.load(str(ext), load_external_data=False)
    loc = "../../outside.bin" if where == "escaping" else str(secret)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = loc
    onnx.save(m, str(ext))
    res = CliRunner().invoke(main, ["export-triton", str(ext), "--repo", str(tmp_path / "repo"), "--name", "x"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [f"error: {ext}: an initializer's external data location {loc!r} is not a file inside "
                                               f"{ext.parent}; external data must sit beside the model (re-export with "
                                               "`rn-deploy export --external-data`)"]
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("name", ['fm"\nplatform: "pytorch_libtorch', "a\\b", "a/b", ".hidden", "", "x y", "..", "é"])
def test_model_names_triton_would_not_take_are_one_line_refusals(onnx_model: Path, tmp_path: Path, name: str):
    res = CliRunner().invoke(main, ["export-triton", str(onnx_model), "--repo", str(tmp_path / "repo"), "--name", name])
    assert res.exit_code == 2, res.output  # a bad option value: a usage error, judged before any work (issue 32.12)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Invalid value for '--name': ") and f"model name {name!r}: use letters" in lines[0]
    assert not (tmp_path / "repo").exists()


def test_read_only_repository_is_one_line_naming_the_folder(onnx_model: Path, tmp_path: Path):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode: a read-only bind is not available, so use a file in the way
            ro.chmod(0o755)
            ro = tmp_path / "file"
            ro.write_text("x")
            repo = ro / "repo"
        else:
            repo = ro
        res = CliRunner().invoke(main, ["export-triton", str(onnx_model), "--repo", str(repo), "--name", "fm"])
        assert res.exit_code == 1
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {repo}: cannot write the model repository there ("), res.output
    finally:
        (tmp_path / "ro").chmod(0o755)


def _nhwc_classifier(path: Path, hw: list) -> Path:
    """A tiny real NHWC classifier (3 channels last, 3 classes): transpose to NCHW, global average pool, flatten."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), helper.make_node("GlobalAveragePool", ["t"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *hw, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.mark.parametrize("hw", [["h", "w"], [32, 32]], ids=["dynamic", "static-32"])
def test_nhwc_image_contract_takes_pixels_with_the_models_channels(tmp_path: Path, hw: list):
    """Planted (issue 32 item 11): the image model's ``pixels`` dims took axis 1 of the input whatever the layout: an NHWC
    model got [-1, -1, -1] (dynamic) or [-1, -1, 32] (static 32 px) instead of [-1, -1, 3]."""
    src = _nhwc_classifier(tmp_path / "nhwc.onnx", hw)
    folder = export_triton(src, tmp_path / "repo", "nhwc")
    front = _parse(folder.with_name("nhwc_image"))
    pixels = next(i for i in front.input if i.name == "pixels")
    assert list(pixels.dims) == [-1, -1, 3]
    assert list(front.output[-1].dims) == [3]  # probs: one per class
    pre = json.loads((folder / "rn-deploy.json").read_text())["preprocessing"]
    assert pre["layout"] == "NHWC" and pre["channel_order"] == "RGB"

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


def test_plan_repository_from_fake_tensorrt_manifest(onnx_model: Path, tmp_path: Path):
    """Full TensorRT cannot be installed here: a stand-in engine file with a tensorrt manifest (as
    `rn-deploy build --backend tensorrt` writes it) checks the plan branch of the config."""
    engine = tmp_path / "fake_tensorrt.engine"
    engine.write_bytes(b"stand-in for a TensorRT plan")
    manifest = {"format": "rn-deploy-engine/1", "backend": "tensorrt", "library_version": "10.13.0", "precision": "fp16",
                "strongly_typed": False, "fp16_flag": True, "targets": [], "build_gpu": {"name": "x", "compute_capability": "8.9"},
                "profiles": [{"input": {"min": [1, 1, 28, 28], "opt": [8, 1, 64, 64], "max": [24, 1, 512, 512]}}],
                "onnx_path": str(onnx_model), "onnx_sha256": "", "built_from": str(onnx_model),
                "inputs": [{"name": "input", "dtype": "float", "shape": [-1, 1, -1, -1]}],
                "outputs": [{"name": "logits", "dtype": "float", "shape": [-1, 4]}], "build_seconds": 1.0, "built_at": "",
                "options": {}, "engine_path": str(engine), "engine_size": 28, "engine_sha256": "",
                "config": {"class_names": ["a", "b", "c", "d"]}, "notes": []}
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
    folder = export_triton(ext, tmp_path / "repo", "ext")
    assert (folder / "1" / "model.onnx.data").stat().st_size > 1000
    shutil.rmtree(tmp_path / "repo")

"""Issue 28's done-when: a fastai xresnet50, a timm resnet50d and a torchvision resnet50 each go import -> export ->
build (TensorRT-RTX) -> validate -> eval, with ONNX Runtime's logits equal to the source library's.

One module-scoped pipeline per source (resnet50 at 64 px, 3 classes, batch <= 2). The independent answer is the source
library's own forward pass on the random weights it was given. Without a GPU the engine is built (ahead of time, sm89)
but cannot run: validate and eval then say so and pass only with --allow-skip, which this test gives; with a GPU both
judge it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from rn_deploy.cli import main

from .conftest import HAS_CUDA, needs_rtx, write_imagefolder
from .test_importers import NEEDS, randomised, source_model

pytestmark = [needs_rtx, pytest.mark.slow]

# Each source needs only its own library.
SOURCES = [pytest.param((lib, name), marks=NEEDS[lib], id=f"{lib}-{name}")
           for lib, name in (("fastai", "xresnet50"), ("timm", "resnet50d"), ("torchvision", "resnet50"))]
COLOURS = {"0": (200, 30, 30), "1": (30, 200, 30), "2": (30, 30, 200)}


def run(*args: str) -> dict:
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("colours")
    write_imagefolder(root, COLOURS, 4)
    return root


@pytest.fixture(scope="module", params=SOURCES)
def pipeline(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One source through import, export and build; shared by the tests below."""
    library, name = request.param
    d = tmp_path_factory.mktemp(name)
    src = randomised(source_model(library, name, n_classes=len(COLOURS)))
    torch.save(src.state_dict(), d / "weights.pth")
    imported = run("import", str(d / "weights.pth"), "-o", str(d / "model.pt"), "--size", "64")
    exported = run("export", str(d / "model.pt"))
    built = run("build", exported["onnx_path"], "--backend", "tensorrt-rtx", "--fp32", "--target", "sm89",
                "--min", "1x3x32x32", "--opt", "2x3x64x64", "--max", "2x3x64x64")
    return {"dir": d, "source": src, "imported": imported, "onnx": Path(exported["onnx_path"]), "engine": Path(built["engine_path"])}


def test_onnx_logits_equal_the_source_library(pipeline: dict):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = pipeline["source"](x).numpy()
    sess = ort.InferenceSession(str(pipeline["onnx"]), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
    assert pipeline["imported"]["arch"] in ("resnet50", "tv_resnet50")


def test_validate_and_eval_judge_onnx_and_engine(pipeline: dict, data: Path):
    d = pipeline["dir"]
    val = run("validate", "--checkpoint", str(d / "model.pt"), "--onnx", str(pipeline["onnx"]), "--engine", str(pipeline["engine"]),
              "--sizes", "32,64", "--batch", "2", "--warmup", "0", "--iters", "1", "--allow-skip", "--out", str(d / "val"))
    compared = {c["backend"] for c in val["cells"] if c["compared"]}
    assert "ort-cpu-fp32" in compared and all(c["passed"] for c in val["cells"] if c["compared"])
    assert ("trt-tensorrt-rtx-fp32" in compared) == HAS_CUDA
    ev = run("eval", "--checkpoint", str(d / "model.pt"), "--onnx", str(pipeline["onnx"]), "--engine", str(pipeline["engine"]),
             "--dataset", "imagefolder", "--data", str(data), "--allow-skip", "--out", str(d / "eval"))
    rows = {r["kind"]: r for r in ev["artifacts"]}
    assert rows["onnx"]["ran"] and rows["onnx"]["agreement"] == 1.0 and ev["count"] == 6
    assert rows["engine"]["ran"] == HAS_CUDA and ev["passed"]

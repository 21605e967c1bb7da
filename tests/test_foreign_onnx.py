"""A foreign ONNX (tensors ``x`` -> ``y``, NHWC) through import, build, validate, eval, export-triton and serve.

The foreign model is one of our ResNets wrapped to take NHWC and exported by torch with its own tensor names, so the
independent answer is that PyTorch model on the NCHW batch: every consumer must permute for the runner, find ``x``/``y``
itself and feed what the imported config says. Graphs rn-deploy cannot feed (a second input, a non-image input,
several outputs, an output of another model) are refused in one line, before any work.
Planted bug (tried): OrtRunner.prepare without the NHWC permute makes ORT refuse the 2x3x32x32 batch (validate fails).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from rn_deploy.checkpoint import load_checkpoint
from rn_deploy.cli import main
from rn_deploy.engine import Engine
from rn_deploy.foreign import import_onnx
from rn_deploy.preprocess import preprocess

from .conftest import make_checkpoint, needs_rtx, write_imagefolder

CLASSES = ["blue", "green", "grey", "red"]  # sorted: the image-folder loader orders classes by folder name
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "grey": (128, 128, 128)}


class _NHWC(torch.nn.Module):
    def __init__(self, m: torch.nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x.permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ref.pt (resnet18, 4 classes, 32 px), foreign.onnx (the same net taking NHWC, tensors x -> y) and its import."""
    d = tmp_path_factory.mktemp("foreign")
    make_checkpoint(d / "ref.pt", arch="resnet18", n_classes=4, size=32)
    ck = load_checkpoint(d / "ref.pt")
    b, h, w = torch.export.Dim("b", min=1, max=64), torch.export.Dim("h", min=16, max=4096), torch.export.Dim("w", min=16, max=4096)
    torch.onnx.export(_NHWC(ck.model).eval(), (torch.randn(2, 32, 32, 3),), str(d / "foreign.onnx"), input_names=["x"],
                      output_names=["y"], dynamo=True, dynamic_shapes=({0: b, 1: h, 2: w},), external_data=False, verbose=False)
    (d / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    res = CliRunner().invoke(main, ["import", str(d / "foreign.onnx"), "-o", str(d / "imp" / "model.onnx"), "--classes",
                                    str(d / "classes.txt"), "--size", "32", "--json"])
    assert res.exit_code == 0, res.output
    (d / "import.json").write_text(res.stdout)
    return {"dir": d, "ref": d / "ref.pt", "raw": d / "foreign.onnx", "onnx": d / "imp" / "model.onnx"}


def test_import_detects_names_and_layout_and_stamps_the_config(foreign: dict[str, Path]):
    rep = json.loads((foreign["dir"] / "import.json").read_text())
    assert (rep["input_name"], rep["output_name"], rep["layout"], rep["dynamic_hw"]) == ("x", "y", "NHWC", True)
    cfg = rep["config"]
    assert cfg["class_names"] == CLASSES and cfg["n_classes"] == 4 and cfg["image_size"] == [32, 32] and cfg["layout"] == "NHWC"
    m = onnx.load(str(foreign["onnx"]))
    assert [i.name for i in m.graph.input] == ["x"] and [o.name for o in m.graph.output] == ["y"]  # names kept
    assert json.loads({p.key: p.value for p in m.metadata_props}["rn_deploy.config"])["layout"] == "NHWC"


@pytest.mark.parametrize("which", ["onnx", "raw"])
def test_validate_against_the_checkpoint_permutes_for_the_nhwc_graph(foreign: dict[str, Path], which: str):
    """Imported or raw (layout detected from the axis with 3 channels): ORT on NHWC equals PyTorch on NCHW."""
    res = CliRunner().invoke(main, ["validate", "--checkpoint", str(foreign["ref"]), "--onnx", str(foreign[which]), "--backends",
                                    "ort-cpu", "--sizes", "32,47x61", "--batch", "1,2", "--warmup", "0", "--iters", "1",
                                    "--out", str(foreign["dir"] / f"val-{which}"), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    cells = [c for c in rep["cells"] if c["compared"]]
    assert len(cells) == 4 and all(c["parity"]["rel_l2"] < 1e-4 for c in cells)


def test_engine_predict_equals_pytorch_on_the_same_pixels(foreign: dict[str, Path]):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8) for i in range(5)]
    ck = load_checkpoint(foreign["ref"])
    with torch.no_grad():
        want = ck.model(preprocess(images, (32, 32), 3, ck.config.mean, ck.config.std)).softmax(1)
    with Engine.load(foreign["onnx"], provider="cpu") as eng:
        got = eng.predict(images)
    assert [p.label for p in got] == [CLASSES[int(i)] for i in want.argmax(1)]
    np.testing.assert_allclose([p.score for p in got], want.max(1).values.numpy(), atol=1e-5)


def test_eval_without_a_checkpoint_uses_the_onnx_as_reference(foreign: dict[str, Path]):
    data = foreign["dir"] / "data"
    write_imagefolder(data, COLOURS, 4)
    res = CliRunner().invoke(main, ["eval", "--onnx", str(foreign["onnx"]), "--onnx", str(foreign["raw"]), "--dataset", "imagefolder",
                                    "--data", str(data), "--out", str(foreign["dir"] / "eval"), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    ref, raw = rep["artifacts"]
    assert ref["kind"] == "onnx" and ref["backend"].startswith("ort-cpu-fp32") and ref["count"] == 8
    assert raw["agreement"] == 1.0 and raw["passed"]  # the raw graph, fed as the imported one says


def _classifier(path: Path, inputs: list[onnx.ValueInfoProto], extra_out: bool = False, classes: int = 3) -> Path:
    """A tiny real classifier graph: global average pool + flatten of the first input (+ a second output)."""
    nodes = [helper.make_node("GlobalAveragePool", [inputs[0].name], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", classes])]
    if extra_out:
        nodes.append(helper.make_node("Relu", ["y"], ["z"]))
        outs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", classes]))
    g = helper.make_graph(nodes, "g", inputs, outs)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _img(name: str = "x", shape: list | None = None, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape or ["n", 3, "h", "w"])


@pytest.mark.parametrize(("inputs", "extra", "args", "message"), [
    ([_img(), _img("mask")], False, [], "a second input \\('x', 'mask'\\)"),
    ([_img("ids", ["n", 16], TensorProto.INT64)], False, [], "input 'ids' is int64 of rank 2, not an image"),
    ([_img()], True, [], "2 outputs \\('y', 'z'\\); pick the logits"),
    ([_img("x", ["n", "h", "w", "c"])], False, [], "cannot tell whether input 'x'"),
    ([_img()], False, ["--output-name", "logits"], "no output 'logits'; its outputs are \\['y'\\]"),
    ([_img()], False, ["--no-normalize", "--mean", "0.5,0.5,0.5"], "--no-normalize feeds pixels / 255"),
], ids=["second-input", "non-image", "two-outputs", "no-layout", "wrong-name", "normalize-twice"])
def test_graphs_it_cannot_feed_are_refused_in_one_line(tmp_path: Path, inputs, extra: bool, args: list[str], message: str):
    src = _classifier(tmp_path / "g.onnx", inputs, extra)
    res = CliRunner().invoke(main, ["import", str(src), "-o", str(tmp_path / "out" / "m.onnx"), *args])
    assert res.exit_code == 1, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert __import__("re").search(message, res.output), res.output
    assert not (tmp_path / "out" / "m.onnx").exists()


def test_output_name_picks_the_logits_and_no_normalize_feeds_pixels(tmp_path: Path):
    src = _classifier(tmp_path / "g.onnx", [_img()], extra_out=True)
    r = import_onnx(src, tmp_path / "m.onnx", output_name="y", normalize=False)
    assert r.output_name == "y" and r.config["mean"] == [0.0] * 3 and r.config["std"] == [1.0] * 3 and r.layout == "NCHW"
    img = np.full((8, 8, 3), 51, np.uint8)
    with Engine.load(tmp_path / "m.onnx", provider="cpu") as eng:  # the graph averages pixels / 255: 0.2 for every class
        np.testing.assert_allclose(eng.logits(preprocess([img], (8, 8), 3, [0.0] * 3, [1.0] * 3)).numpy(), [[0.2] * 3], atol=1e-6)


def test_an_onnx_of_another_model_is_refused_by_validate_and_eval_in_one_line(foreign: dict[str, Path], tmp_path: Path):
    """Issue 25 item 1: these crashed with 'output shape differs' / 'selected index k out of range' tracebacks."""
    other = _classifier(tmp_path / "other.onnx", [_img()])  # 3 classes; the checkpoint has 4
    for cmd in (["validate", "--checkpoint", str(foreign["ref"]), "--onnx", str(other), "--out", str(tmp_path / "v")],
                ["eval", "--checkpoint", str(foreign["ref"]), "--onnx", str(other), "--dataset", "imagefolder", "--data",
                 str(tmp_path / "nodata"), "--out", str(tmp_path / "e")]):
        res = CliRunner().invoke(main, cmd)
        assert res.exit_code == 1, res.output
        assert "it is another model" in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_export_triton_names_the_foreign_tensors_and_layout(foreign: dict[str, Path], tmp_path: Path):
    res = CliRunner().invoke(main, ["export-triton", str(foreign["onnx"]), "--repo", str(tmp_path / "repo"), "--name", "fx", "--json"])
    assert res.exit_code == 0, res.output
    meta = json.loads(res.stdout)
    assert meta["input"]["name"] == "x" and meta["output"]["name"] == "y" and meta["input"]["dims"] == [-1, -1, 3]
    assert meta["preprocessing"]["layout"] == "NHWC" and meta["class_names"] == CLASSES
    pbtxt = (tmp_path / "repo" / "fx" / "config.pbtxt").read_text()
    assert 'name: "x"' in pbtxt and 'name: "y"' in pbtxt


@needs_rtx
def test_build_takes_nchw_profiles_for_an_nhwc_graph(foreign: dict[str, Path], tmp_path: Path):
    from rn_deploy.builder import Profile, build_engine
    from rn_deploy.errors import RnDeployError

    p = Profile((1, 3, 16, 16), (2, 3, 32, 32), (2, 3, 64, 64))
    m = build_engine(foreign["onnx"], tmp_path / "f.engine", backend="tensorrt-rtx", precision="fp32", profiles=[p], targets=["sm89"])
    assert m.layout == "NHWC" and m.input_profiles == [p] and m.inputs[0]["name"] == "x" and m.inputs[0]["shape"] == [-1, -1, -1, 3]
    assert m.config is not None and m.config["class_names"] == CLASSES
    # a graph whose H/W are fixed refuses a profile that spans sizes, naming the axis in its own layout
    g = onnx.load(str(foreign["onnx"]))
    for d in g.graph.input[0].type.tensor_type.shape.dim[1:3]:
        d.dim_value = 32
    onnx.save(g, str(tmp_path / "static.onnx"))
    with pytest.raises(RnDeployError, match=r"input axis 1 \(H\) is fixed at 32 in the ONNX, but profile 0 spans 16..64"):
        build_engine(tmp_path / "static.onnx", tmp_path / "s.engine", backend="tensorrt-rtx", precision="fp32", profiles=[p],
                     targets=["sm89"])
    assert not (tmp_path / "s.engine").exists()


def test_serve_answers_as_engine_predict(foreign: dict[str, Path], tmp_path: Path):
    """The imported NHWC graph served by Triton (PyTriton): the PNG's label and score are Engine.predict's."""
    import io

    from PIL import Image

    from rn_deploy.client import classify

    from .test_serve import start_server

    img = np.random.default_rng(1).integers(0, 255, (37, 45, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    with Engine.load(foreign["onnx"], provider="cpu") as eng:
        want = eng.predict([img])[0]
    srv = start_server(foreign["onnx"], tmp_path / "serve.log")
    try:
        got = classify(srv.http, [buf.getvalue()])[0]
    finally:
        srv.stop()
    assert "error" not in got, got
    assert got["label"] == want.label and got["score"] == pytest.approx(want.score, abs=1e-5)

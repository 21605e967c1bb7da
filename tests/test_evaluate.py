"""`rn-deploy eval`: accuracy of the checkpoint, its ONNX files and engines on real Fashion-MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from rn_deploy.cli import main
from rn_deploy.datasets.sources import load_split
from rn_deploy.evaluate import limits_for, onnx_precision, run_eval
from tests.conftest import FASHION_DIR, HAS_CUDA, make_checkpoint, needs_fashion, needs_rtx

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """resnet18 trained 1 epoch on 1,000 Fashion-MNIST images at 28 px (CPU), and its FP32 ONNX."""
    from rn_deploy.train import TrainConfig, fit

    from rn_deploy.export import export_onnx

    out = tmp_path_factory.mktemp("eval")
    res = fit(TrainConfig(arch="resnet18", dataset="fashion-mnist", data=str(FASHION_DIR), epochs=1, batch_size=64, lr=3e-3,
                          size=28, device="cpu", out=str(out), limit=1000), progress=False)
    ckpt = Path(res.checkpoint)
    onnx_path = export_onnx(ckpt, out / "model.onnx", verify=False).onnx_path
    return {"ckpt": ckpt, "onnx": Path(onnx_path), "dir": out}


def _strict(path: Path) -> dict:
    def refuse(c: str) -> None:
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_reference_reproduces_the_accuracy_training_recorded(trained: dict[str, Path], tmp_path: Path):
    import torch

    rec = torch.load(trained["ckpt"], weights_only=True)["train"]["eval"]
    assert (rec["dataset"], rec["split"], rec["count"], rec["limit"], rec["seed"]) == ("fashion-mnist", "test", 1000, 1000, 0)
    rep, files = run_eval(trained["ckpt"], limit=1000, out_dir=tmp_path, progress=False)
    ref = rep["artifacts"][0]
    assert rep["recorded"]["same_images"] and rep["reproduces_training"] is True
    assert ref["correct"] == rec["correct"] and ref["top1"] == rec["top1"] and ref["count"] == 1000
    assert 0.2 < ref["top1"] < 1.0 and ref["top5"] is not None and ref["top5"] >= ref["top1"]
    assert sum(c["count"] for c in ref["per_class"]) == 1000
    assert sum(c["correct"] for c in ref["per_class"]) == ref["correct"]
    assert _strict(Path(files["json"]))["format"] == "rn-deploy-eval/1"
    assert "reproduces it exactly" in Path(files["markdown"]).read_text()
    # a different subset is not claimed to reproduce anything
    rep2, _ = run_eval(trained["ckpt"], limit=999, out_dir=tmp_path, progress=False)
    assert rep2["recorded"]["same_images"] is False and rep2["reproduces_training"] is None
    # inspect shows the recorded evaluation
    r = CliRunner().invoke(main, ["inspect", str(trained["ckpt"])])
    assert r.exit_code == 0, r.output
    assert f"top-1 {100 * rec['top1']:.2f}% ({rec['correct']}/1000) on fashion-mnist test (--limit 1000 --seed 0)" in r.output


def test_limit_and_seed_pick_the_images_training_evaluated_on():
    from rn_deploy.datasets.sources import load_dataset

    _, val = load_dataset("fashion-mnist", str(FASHION_DIR))
    want = val.subset(1000, 3)
    got = load_split("fashion-mnist", str(FASHION_DIR), "test", limit=1000, seed=3)
    assert got.images.equal(want.images) and got.labels.equal(want.labels)
    assert got.index is not None and val.images[got.index].equal(got.images)
    assert len(load_split("fashion-mnist", str(FASHION_DIR), "val")) == 10000  # val names the held-out split too


def test_ort_fp32_agrees_with_pytorch_on_2000_test_images(trained: dict[str, Path], tmp_path: Path):
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(trained["ckpt"]), "--onnx", str(trained["onnx"]), "--limit", "2000",
                                  "--batch", "500", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    rep = _strict(tmp_path / "eval.json")
    assert rep["passed"] and rep["count"] == 2000
    ort = rep["artifacts"][1]
    assert ort["backend"] == "ort-cpu-fp32" and ort["precision"] == "fp32" and ort["ran"]
    assert ort["agreement"] >= 0.999, ort["disagree"]
    assert ort["disagree_count"] == len(ort["disagree"]) == round((1 - ort["agreement"]) * 2000)
    assert abs(ort["top1"] - rep["artifacts"][0]["top1"]) <= 0.001
    assert ort["images_per_s"] > 0 and ort["batch"] == 500
    assert (tmp_path / "confusion.png").stat().st_size > 10_000
    assert (tmp_path / "delta-model.onnx-ort-cpu.png").exists()


def _damage(src: Path, dst: Path, factor: float) -> None:
    m = onnx.load(str(src))
    conv_weights = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    init = next(t for t in m.graph.initializer if t.name in conv_weights)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(m, str(dst))


def test_a_damaged_onnx_makes_eval_exit_1(trained: dict[str, Path], tmp_path: Path):
    bad = tmp_path / "damaged.onnx"
    _damage(trained["onnx"], bad, 3.0)
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(trained["ckpt"]), "--onnx", str(bad), "--limit", "500",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 1, r.output
    err = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "damaged.onnx" in err[0] and "agrees with the reference" in err[0]
    rep = _strict(tmp_path / "eval.json")
    art = rep["artifacts"][1]
    assert not rep["passed"] and not art["passed"] and art["agreement"] < 0.999 and art["disagree_count"] > 5
    # a looser explicit --max-drop does not excuse an FP32 artifact that disagrees with the reference
    r2 = CliRunner().invoke(main, ["eval", "--checkpoint", str(trained["ckpt"]), "--onnx", str(bad), "--limit", "500",
                                   "--out", str(tmp_path), "--max-drop", "100"])
    assert r2.exit_code == 1


def test_precision_of_artifacts_and_default_limits(trained: dict[str, Path], tmp_path: Path):
    assert onnx_precision(trained["onnx"]) == "fp32"
    q = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")])
    onnx.save(helper.make_model(q), str(tmp_path / "q.onnx"))
    assert onnx_precision(tmp_path / "q.onnx") == "int8"
    assert limits_for("fp16", None) == {"max_drop_points": 0.3, "min_agreement": 0.99}
    assert limits_for("int8", None) == {"max_drop_points": 1.0, "min_agreement": 0.95}
    assert limits_for("fp32", None) == {"max_drop_points": None, "min_agreement": 0.999}
    assert limits_for("fp16", 2.0)["max_drop_points"] == 2.0
    assert limits_for("fp16", None, {"fp16": 0.5})["min_agreement"] == 0.5


def _input_qdq(src: Path, dst: Path, zero_point: np.ndarray | None, scale: float = 0.05) -> Path:
    """``src`` with a QuantizeLinear/DequantizeLinear pair on its input, quantizing to ``zero_point``'s type (FP8 when
    None): a real Q/DQ graph ONNX Runtime runs, as far from FP32 as that type's rounding of the normalised input."""
    m = onnx.load(str(src))
    x = m.graph.input[0].name
    for n in m.graph.node:
        n.input[:] = ["x_dq" if i == x else i for i in n.input]
    zp = (helper.make_tensor("x_zp", TensorProto.FLOAT8E4M3FN, [], [0.0]) if zero_point is None
          else numpy_helper.from_array(zero_point, "x_zp"))
    m.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), "x_scale"), zp])
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]))
    m.graph.node.insert(0, helper.make_node("QuantizeLinear", [x, "x_scale", "x_zp"], ["x_q"]))
    onnx.save(m, str(dst))
    return dst


def test_fp8_artifacts_are_judged_by_the_fp8_limits(trained: dict[str, Path], tmp_path: Path):
    """Planted (issue 32 item 9): eval called every QuantizeLinear graph "int8", so `--min-agreement fp8=...` (and fp8's
    --max-drop) never reached an FP8 Q/DQ model; one function (onnxfile.graph_precision) now decides everywhere."""
    f8 = _input_qdq(trained["onnx"], tmp_path / "model.fp8.onnx", None)
    u8 = _input_qdq(trained["onnx"], tmp_path / "model.uint8.onnx", np.array(128, np.uint8), 0.1)
    assert (onnx_precision(f8), onnx_precision(u8)) == ("fp8", "int8")
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(trained["ckpt"]), "--onnx", str(f8), "--onnx", str(u8), "--limit", "200",
                                  "--min-agreement", "fp8=0.42", "--min-agreement", "int8=0.43", "--backends", "ort-cpu",
                                  "--out", str(tmp_path), "--json"])
    rows = {Path(a["path"]).name: a for a in json.loads(r.stdout)["artifacts"][1:]}
    assert rows["model.fp8.onnx"]["precision"] == "fp8" and rows["model.fp8.onnx"]["backend"] == "ort-cpu-fp8"
    assert rows["model.fp8.onnx"]["limits"] == {"max_drop_points": 1.0, "min_agreement": 0.42}
    assert rows["model.uint8.onnx"]["precision"] == "int8" and rows["model.uint8.onnx"]["limits"]["min_agreement"] == 0.43


@needs_rtx
def test_an_engine_that_cannot_run_here_fails_unless_allowed(trained: dict[str, Path], tmp_path: Path):
    from rn_deploy.builder import Profile, build_engine

    eng = tmp_path / "model.tensorrt-rtx.engine"
    build_engine(trained["onnx"], eng, backend="tensorrt-rtx", precision="fp16", targets=["sm86"],
                 profiles=[Profile((1, 1, 32, 32), (8, 1, 32, 32), (32, 1, 64, 64))])
    args = ["eval", "--checkpoint", str(trained["ckpt"]), "--engine", str(eng), "--limit", "200", "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args)
    if HAS_CUDA:
        # With a GPU the engine is unusable, not absent: built for sm86 only, and its profiles start at
        # 32 px while the model is judged at 28 px. That is a failure --allow-skip does not excuse.
        assert r.exit_code == 1, r.output
        assert CliRunner().invoke(main, [*args, "--allow-skip"]).exit_code == 1
        art = _strict(tmp_path / "eval.json")["artifacts"][1]
        assert art["ran"] is False and not art["passed"]
        return
    assert r.exit_code == 1 and "no CUDA GPU" in r.output and "--allow-skip" in r.output
    r = CliRunner().invoke(main, [*args, "--allow-skip"])
    assert r.exit_code == 0, r.output
    art = _strict(tmp_path / "eval.json")["artifacts"][1]
    assert art["ran"] is False and art["precision"] == "fp16" and "no CUDA GPU" in art["reason"]


def _one_line_error(args: list[str]) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def test_bad_inputs_give_one_line_errors(trained: dict[str, Path], tmp_path: Path):
    ckpt = str(trained["ckpt"])
    msg = _one_line_error(["eval", "--checkpoint", ckpt, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert "nowhere" in msg and "no such folder" in msg
    rgb = make_checkpoint(tmp_path / "rgb.pt", n_classes=10, in_channels=3, size=32)
    msg = _one_line_error(["eval", "--checkpoint", str(rgb), "--dataset", "fashion-mnist", "--limit", "10", "--out", str(tmp_path)])
    assert "1 channel(s)" in msg and "takes 3" in msg
    (tmp_path / "empty" / "val").mkdir(parents=True)
    msg = _one_line_error(["eval", "--checkpoint", str(rgb), "--dataset", "imagefolder", "--data", str(tmp_path / "empty"),
                           "--out", str(tmp_path)])
    assert "no class folders" in msg and "empty" in msg
    msg = _one_line_error(["eval", "--checkpoint", str(rgb), "--out", str(tmp_path)])
    assert "pass --dataset" in msg
    msg = _one_line_error(["eval", "--checkpoint", ckpt, "--onnx", str(tmp_path / "missing.onnx"), "--out", str(tmp_path)])
    assert "missing.onnx" in msg


def test_image_folder_and_mnist_png_references_reproduce_training(tmp_path: Path):
    """The decode (presize) + resize path of folders: eval's reference judges them exactly as training did."""
    import warnings

    from PIL import Image
    from rn_deploy.train import TrainConfig, fit

    from rn_deploy.datasets.sources import load_fashion_mnist
    from tests.conftest import write_imagefolder

    root = tmp_path / "folder"
    write_imagefolder(root, {"a": (220, 40, 40), "b": (40, 200, 40), "c": (40, 40, 220)}, 12)
    res = fit(TrainConfig(arch="fcn", dataset="imagefolder", data=str(root), epochs=1, batch_size=8, lr=1e-2, size=32, presize=40,
                          device="cpu", out=str(tmp_path / "run"), workers=0), progress=False)
    rep, _ = run_eval(res.checkpoint, out_dir=tmp_path, progress=False)  # dataset, data and split from the checkpoint
    assert (rep["dataset"], rep["split"], rep["count"]) == ("imagefolder", "val", 18)
    assert rep["reproduces_training"] is True and rep["artifacts"][0]["top1"] == res.accuracy
    assert rep["artifacts"][0]["top5"] is None  # 3 classes

    fm = load_fashion_mnist(FASHION_DIR, "test")
    mn = tmp_path / "mnist"
    for split, offset in (("training", 0), ("testing", 5000)):
        for i in range(offset, offset + 150):
            d = mn / split / str(int(fm.labels[i]))
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(fm.images[i, 0].numpy()).save(d / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit(TrainConfig(arch="mnist_resnet", dataset="mnist-png", data=str(mn), epochs=1, batch_size=32, lr=1e-2, size=28,
                              device="cpu", out=str(tmp_path / "mrun"), workers=0, limit=100, seed=7), progress=False)
    rep, _ = run_eval(res.checkpoint, dataset="mnist", data=mn, limit=100, out_dir=tmp_path, progress=False)
    assert rep["seed"] == 7 and rep["count"] == 100  # the recorded seed is the default
    assert rep["reproduces_training"] is True and rep["artifacts"][0]["correct"] == round(res.accuracy * 100)


def test_an_image_folder_unlike_the_models_classes_is_blamed_on_the_model_not_a_training_split(tmp_path: Path):
    """eval/quantize compare a folder with the checkpoint's class names: the error says so (issue 32.12)."""
    from rn_deploy.errors import DataError
    from tests.conftest import write_imagefolder

    write_imagefolder(tmp_path, {"cat": (200, 0, 0), "dog": (0, 200, 0)}, 2)
    with pytest.raises(DataError) as e:
        load_split("imagefolder", tmp_path, "val", presize=16, class_names=["cat", "eel"])
    msg = str(e.value)
    assert "the model's class names" in msg and "training split" not in msg
    assert "only here: ['dog']" in msg and "missing: ['eel']" in msg and str(tmp_path / "val") in msg

"""Post-training quantization on real Fashion-MNIST: the Q/DQ form, the accuracy gate, engines and refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from rn_deploy.builder import Profile, build_engine
from rn_deploy.cli import main
from rn_deploy.datasets.sources import load_split
from rn_deploy.errors import BuildError
from rn_deploy.export import export_onnx
from rn_deploy.quantize import QuantizeError, check_trt_form, evaluate_onnx, qdq_precision, report_paths

from .conftest import FASHION_DIR, HAS_TRT, make_checkpoint, needs_fashion, needs_rtx, requires, skip

HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None
needs_modelopt = requires(HAS_MODELOPT, "nvidia-modelopt not installed (tools/setup.sh installs it with --no-deps)")
PROFILE = Profile((1, 1, 32, 32), (32, 1, 32, 32), (256, 1, 64, 64))
EVAL = 500  # held-out images the gate judges in these tests (0.2 pt each)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 trained here for one epoch on 2,000 Fashion-MNIST images, exported to FP32 ONNX."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        skip(f"Fashion-MNIST not found in {FASHION_DIR}")
    from rn_deploy.train.loop import TrainConfig, fit

    d = tmp_path_factory.mktemp("quant")
    res = fit(TrainConfig(arch="resnet18", dataset="fashion-mnist", data=str(FASHION_DIR), epochs=1, batch_size=64, lr=3e-3,
                          size=32, device="cpu", out=str(d), limit=2000), progress=False)
    assert res.accuracy > 0.6, res
    return Path(export_onnx(res.checkpoint, d / "model.onnx", verify=False).onnx_path)


def _quantize(args: list[str]) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, ["quantize", *args])
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


@needs_fashion
@needs_modelopt
def test_quantize_passes_the_gate_and_writes_the_tensorrt_qdq_form(trained: Path):
    out = trained.with_name("model.int8.onnx")
    code, stdout, stderr = _quantize([str(trained), "--calib", "fashion-mnist", "--calib-size", "128", "--eval-limit", str(EVAL),
                                      "-o", str(out), "--json"])
    assert code == 0, stderr[-2000:]
    rep = json.loads(stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert rep["passed"] and rep["calib_split"] == "train" and rep["eval_split"] == "test" and rep["eval_images"] == EVAL
    chosen = rep["rungs"][rep["chosen"]]
    assert chosen["drop_pts"] <= 1.0 and chosen["passed"] and chosen["lost"] >= 0 and chosen["gained"] >= 0
    assert chosen["lost"] - chosen["gained"] == round(chosen["drop_pts"] * EVAL / 100)
    assert len(chosen["per_class"]) == 10 and all(c["delta_pts"] is not None for c in chosen["per_class"])
    # The report's per-class deltas add up to its top-1 delta (per-class counts weight them).
    weighted = sum(c["delta_pts"] * c["count"] for c in chosen["per_class"]) / EVAL
    assert weighted == pytest.approx(-chosen["drop_pts"], abs=1e-3)

    m = onnx.load(str(out))
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["rn_deploy.precision"] == "int8" and qdq_precision(m) == "int8" and "rn_deploy.config" in meta
    counts = check_trt_form(m, str(out))  # symmetric, zero point 0, no INT32 bias, per-channel weights
    assert counts["quantized_convs"] == counts["convs"] > 10 and counts["per_channel_scales"] >= counts["convs"]
    adds = [n for n in m.graph.node if n.op_type == "Add"]
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    assert any(producers.get(i) == "DequantizeLinear" for n in adds for i in n.input), "residual Adds get Q/DQ inputs"

    # Independent check of the gate's claim: evaluate the written file again.
    cfg_test = load_split("fashion-mnist", None, "test", limit=EVAL)
    from rn_deploy.export import read_onnx_config

    cfg = read_onnx_config(trained)
    again, _hit = evaluate_onnx(out, cfg_test, cfg)
    assert again["top1"] == pytest.approx(chosen["top1"])
    assert json.loads(report_paths(out)[0].read_text())["chosen"] == rep["chosen"]
    from rn_deploy.runners.ort import OrtRunner
    from rn_deploy.validate import DEFAULT_TOLERANCES

    with OrtRunner(out) as r:  # validate/eval judge it with INT8 tolerances, not FP16's
        assert r.precision == "int8" and r.name == "ort-cpu-int8" and "int8" in DEFAULT_TOLERANCES
    assert "Per-class top-1" in report_paths(out)[1].read_text()


@needs_fashion
@needs_modelopt
@needs_rtx
def test_qdq_model_builds_a_tensorrt_rtx_int8_engine_a_third_of_fp32(trained: Path, tmp_path: Path):
    q = trained.with_name("model.int8.onnx")
    if not q.exists():
        skip("needs the Q/DQ model of test_quantize_passes_the_gate_and_writes_the_tensorrt_qdq_form")
    m8 = build_engine(q, tmp_path / "int8.engine", backend="tensorrt-rtx", targets=["sm89"], profiles=[PROFILE])
    m32 = build_engine(trained, tmp_path / "fp32.engine", backend="tensorrt-rtx", precision="fp32", targets=["sm89"],
                       profiles=[PROFILE])
    assert m8.precision == "int8" and m8.strongly_typed and any("explicit quantization" in n for n in m8.notes)
    assert json.loads((tmp_path / "int8.engine.json").read_text())["precision"] == "int8"
    ratio = m8.engine_size / m32.engine_size
    # Measured (docs/benchmarks.md): TensorRT-RTX 1.7 INT8 engines are 0.31-0.34x their FP32 engines
    # (resnet18 14.4 vs 45.3 MB): INT8 weights plus ~25-35% more. The 0.30x is not reached.
    assert 0.2 < ratio <= 0.33, (m8.engine_size, m32.engine_size)


@needs_fashion
@needs_modelopt
def test_gate_refuses_an_impossible_max_drop_and_writes_nothing(trained: Path, tmp_path: Path):
    out = tmp_path / "model.int8.onnx"
    code, stdout, stderr = _quantize([str(trained), "--calib-size", "1", "--method", "minmax", "--eval-limit", str(EVAL),
                                      "--max-drop", "0", "-o", str(out)])
    assert code == 1, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "not written" in last and "--force" in last
    assert not out.exists() and not any(p.exists() for p in report_paths(out)) and list(tmp_path.iterdir()) == []
    # Every rung of the ladder was tried and reported: requested, another method, more images, first/last kept.
    rungs = [ln for ln in stderr.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert len(rungs) == 4 and "first,last" in rungs[-1], stderr[-3000:]


@needs_fashion
@needs_modelopt
def test_quantize_and_eval_apply_one_gate_on_the_same_images(trained: Path, tmp_path: Path):
    """Planted (issue 32 item 9): quantize's gate checked the top-1 drop only, so a rung with a fine top-1 but low
    agreement with FP32 passed quantize and failed eval. Now both judge with the same limits on the same images
    (`--eval-limit N --seed S` = `eval --limit N --seed S`): the rung's agreement is eval's, and a threshold set clearly
    between what it reaches and 1 fails both."""
    n = 300
    out = tmp_path / "weak.int8.onnx"
    common = [str(trained), "--calib-size", "1", "--method", "minmax", "--no-ladder", "--eval-limit", str(n), "--seed", "0",
              "--max-drop", "100"]
    code, stdout, stderr = _quantize([*common, "--min-agreement", "int8=0", "-o", str(out), "--json"])
    assert code == 0, stderr[-2000:]
    rung = json.loads(stdout)["rungs"][0]
    agree = rung["agreement"]
    assert rung["passed"] and rung["failures"] == [] and agree < 0.97, rung  # 1 calibration image: a weak rung
    between = (agree + 1) / 2  # >= 4.5 images above what it reaches: no rounding or near-tie decides the verdicts

    def eval_(min_agreement: float) -> tuple[int, dict]:
        r = CliRunner().invoke(main, ["eval", "--checkpoint", str(trained.with_name("model.pt")), "--onnx", str(out), "--limit",
                                      str(n), "--seed", "0", "--max-drop", "100", "--min-agreement", f"int8={min_agreement:.4f}",
                                      "--backends", "ort-cpu", "--out", str(tmp_path / "eval"), "--json"])  # the gate's runtime
        return r.exit_code, json.loads(r.stdout)["artifacts"][1]

    code, row = eval_(0)
    assert code == 0 and row["precision"] == "int8" and row["count"] == n
    assert abs(row["agreement"] - agree) <= 1 / n  # the same images and preprocessing (references: torch vs ORT FP32)
    code, row = eval_(between)
    assert code == 1 and not row["passed"] and "agrees with the reference" in row["failures"][0]
    strict = tmp_path / "strict.int8.onnx"
    code, _, stderr = _quantize([*common, "--min-agreement", f"int8={between:.4f}", "-o", str(strict)])
    last = stderr.strip().splitlines()[-1]
    assert code == 1 and "not written" in last and "agrees with the reference" in last, stderr[-2000:]
    assert not strict.exists()


@needs_fashion
def test_calibration_set_with_the_wrong_channel_count_is_one_line(tmp_path: Path):
    ck = make_checkpoint(tmp_path / "rgb.pt", n_classes=10, in_channels=3, size=32)
    code, _, stderr = _quantize([str(ck), "--calib", "fashion-mnist", "-o", str(tmp_path / "q.onnx")])
    assert code == 1 and stderr.count("\n") == 1 and "1 channel(s), the model takes 3" in stderr, stderr
    assert not (tmp_path / "q.onnx").exists()


def test_empty_calibration_folder_is_one_line(tmp_path: Path):
    from rn_deploy.checkpoint import ModelConfig, save_checkpoint
    from rn_deploy.models import create_model

    ck = save_checkpoint(tmp_path / "m.pt", create_model("resnet18", n_classes=2, in_channels=3),
                         ModelConfig(arch="resnet18", n_classes=2, image_size=[32, 32], presize=40), {})
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    code, _, stderr = _quantize([str(ck), "--calib", "imagefolder", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "q.onnx")])
    assert code == 1 and stderr.count("\n") == 1 and stderr.startswith("error: ") and "no images" in stderr, stderr


def _fp8_qdq_onnx(path: Path, qdq: bool = True) -> Path:
    """A minimal real FP8 Q/DQ classifier: input -> QuantizeLinear(fp8) -> DequantizeLinear -> Relu -> global pool -> (N, 1)
    logits (without ``qdq``: just Relu and the pool)."""
    h = onnx.helper
    zp = h.make_tensor("zp", onnx.TensorProto.FLOAT8E4M3FN, [], [0.0])
    scale = h.make_tensor("scale", onnx.TensorProto.FLOAT, [], [0.1])
    nodes = [h.make_node("QuantizeLinear", ["input", "scale", "zp"], ["q"], name="q"),
             h.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"], name="dq")] if qdq else []
    head = [h.make_node("Relu", ["dq" if qdq else "input"], ["act"], name="relu"),
            h.make_node("GlobalAveragePool", ["act"], ["pooled"], name="pool"),
            h.make_node("Flatten", ["pooled"], ["logits"], name="flatten", axis=1)]
    g = h.make_graph([*nodes, *head], "fp8",
                     [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 1, "height", "width"])],
                     [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 1])], [zp, scale])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 21)]), str(path))
    return path


def test_fp8_where_unsupported_is_refused_in_one_line(tmp_path: Path):
    f8 = _fp8_qdq_onnx(tmp_path / "tiny.fp8.onnx")
    assert qdq_precision(onnx.load(str(f8))) == "fp8"
    with pytest.raises(BuildError, match=r"^--precision fp8: sm86 has no FP8 tensor cores[^\n]*$"):
        build_engine(f8, tmp_path / "e.engine", backend="tensorrt-rtx", targets=["sm86", "sm89"], profiles=[PROFILE])
    assert not (tmp_path / "e.engine").exists()
    with pytest.raises(QuantizeError, match="FP8 needs --quantizer modelopt"):
        from rn_deploy.quantize import quantize_file

        quantize_file(f8, tmp_path / "x.onnx", np.zeros((1, 1, 8, 8), np.float32), method="minmax", precision="fp8",
                      exclude_nodes=[], quantizer="ort")


@needs_rtx
def test_fp8_qdq_builds_for_sm89_with_tensorrt_rtx(tmp_path: Path):
    m = build_engine(_fp8_qdq_onnx(tmp_path / "tiny.fp8.onnx"), tmp_path / "e.engine", backend="tensorrt-rtx", targets=["sm89"],
                     profiles=[PROFILE])
    assert m.precision == "fp8" and m.strongly_typed and m.engine_size > 0


def test_unknown_exclude_node_names_the_choices(tmp_path: Path):
    f8 = _fp8_qdq_onnx(tmp_path / "tiny.onnx")
    from rn_deploy.quantize import resolve_exclude

    m = onnx.load(str(f8))
    with pytest.raises(QuantizeError, match="no node of that name"):
        resolve_exclude(m, ["conv99"], "tiny.onnx")
    with pytest.raises(QuantizeError, match="no Conv node"):
        resolve_exclude(m, ["first"], "tiny.onnx")


def test_dla_is_refused_on_tensorrt_rtx_and_for_fp32(tmp_path: Path):
    f8 = _fp8_qdq_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(BuildError, match=r"^--dla-core: DLA is a full TensorRT .* tensorrt-rtx has no DLA"):
        build_engine(f8, tmp_path / "e.engine", backend="tensorrt-rtx", targets=["sm89"], profiles=[PROFILE], dla_core=0)
    plain = _fp8_qdq_onnx(tmp_path / "plain.onnx", qdq=False)
    r = CliRunner().invoke(main, ["build", str(plain), "--backend", "tensorrt", "--fp32", "--dla-core", "0",
                                  "--min", "1x1x32x32", "--opt", "1x1x32x32", "--max", "1x1x32x32"])
    assert r.exit_code == 1 and "DLA runs FP16 or INT8" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = CliRunner().invoke(main, ["build", str(f8), "--gpu-fallback"])
    assert r.exit_code == 2 and "--gpu-fallback goes with --dla-core" in r.stderr


@pytest.mark.gpu
@pytest.mark.tensorrt
@requires(HAS_TRT, "DLA builds need JetPack's TensorRT on a Jetson", kind="tensorrt")
def test_dla_build_on_a_jetson(tmp_path: Path):
    import tensorrt as trt

    if trt.Builder(trt.Logger()).num_DLA_cores == 0:
        skip("with a DLA core here (Jetson/DRIVE only)", kind="gpu")
    ck = make_checkpoint(tmp_path / "m.pt", n_classes=10, in_channels=1, size=32)
    onnx_path = Path(export_onnx(ck, tmp_path / "model.onnx").onnx_path)
    m = build_engine(onnx_path, tmp_path / "dla.engine", backend="tensorrt", profiles=[Profile(*[(1, 1, 32, 32)] * 3)],
                     dla_core=0, gpu_fallback=True)
    assert m.options["dla_core"] == 0 and m.options["gpu_fallback"] is True


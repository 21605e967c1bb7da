"""Verdict checks that each once let a planted bug through (issue 24 items 11-13), now proven against it.

Each test names in its docstring the bug planted in a copy of the code that it was seen to catch.
The answers come from independent few-line code: the Fashion-MNIST IDX files read here, the
normalisation written out here, ONNX graphs built here with outputs that are known by construction.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from rn_deploy.checkpoint import load_checkpoint
from rn_deploy.cli import main
from rn_deploy.compare import compare
from rn_deploy.export import export_onnx
from rn_deploy.metrics import parity

from .conftest import FASHION_DIR, make_checkpoint, needs_fashion, requires

HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 (N, 28, 28) from a (gzipped) IDX3 file: 16-byte header, then the pixels."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def _rewire(src: Path, dst: Path, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> Path:
    """``src`` whose logits go through ``nodes`` (reading ``logits_pre`` and ``input``) before they leave the graph;
    same metadata and I/O names, so every rn-deploy command takes it as the model it was exported from."""
    m = onnx.load(str(src))
    out = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [f"{out}_pre" if o == out else o for o in node.output]
    m.graph.initializer.extend(inits)
    m.graph.node.extend(nodes)
    onnx.save(m, str(dst))
    return dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("planted")
    ck = make_checkpoint(d / "m.pt", arch="mnist_resnet", n_classes=10, in_channels=1, size=28)
    return {"ck": ck, "onnx": Path(export_onnx(ck, d / "m.onnx", verify=False).onnx_path), "dir": d}


# ---------------------------------------------------------------------------------------------
# 11. the constant-output check fires per sample
# ---------------------------------------------------------------------------------------------


def test_one_constant_sample_in_a_batch_fails_the_comparison():
    """Planted: ``constant=bool(flat.all())`` in rn_deploy/metrics.py (or ``p.get("constant")`` dropped from
    rn_deploy/compare.check): only an all-constant batch failed; this batch has one dead row among live ones."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(6, 10))
    off = 1e-3 * rng.normal(size=ref.shape)
    for dead_row, value in ((0, 0.0), (3, 1.25), (5, -7.0)):
        out = ref + off
        out[dead_row] = value  # this sample's logits are the same for every class
        res = compare(ref, out, {"rel_l2": None, "cosine": None, "top1": None})
        assert res.parity["constant"] is True and not res, (dead_row, res.parity)
        assert any("constant output" in f for f in res.failures)
    live = compare(ref, ref + off, {"rel_l2": None, "cosine": None, "top1": None})
    assert live and parity(ref, ref + off).constant is False


def test_validate_fails_an_onnx_dead_on_every_other_sample(tiny: dict[str, Path], tmp_path: Path):
    """An ONNX whose logits are zeroed for the odd samples of each batch (and exact for the even ones), judged by
    ``rn-deploy validate`` with every tolerance off: only the per-sample constant check can fail it.

    Planted: ``constant=bool(flat.all())`` in rn_deploy/metrics.py: this passed (exit 0)."""
    # mask[n] = 1 - n % 2: computed from the batch size inside the graph, so it holds at every batch size.
    nodes = [helper.make_node("Shape", ["input"], ["in_shape"], start=0, end=1),
             helper.make_node("Squeeze", ["in_shape", "zero_axis"], ["n"]),
             helper.make_node("Range", ["i0", "n", "i1"], ["pos"]),
             helper.make_node("Mod", ["pos", "i2"], ["odd"]),
             helper.make_node("Sub", ["i1", "odd"], ["even"]),
             helper.make_node("Cast", ["even"], ["even_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["even_f", "one_axis"], ["mask"]),
             helper.make_node("Mul", ["logits_pre", "mask"], ["logits"])]
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
             {"i0": 0, "i1": 1, "i2": 2, "zero_axis": [0], "one_axis": [1]}.items()]
    half = _rewire(tiny["onnx"], tmp_path / "half_dead.onnx", nodes, inits)

    import onnxruntime as ort

    x = np.random.default_rng(1).normal(size=(4, 1, 28, 28)).astype(np.float32)
    y = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.all(y[1::2] == 0) and np.all(np.ptp(y[0::2], axis=1) > 0)  # the file does what it is built to do

    res = CliRunner().invoke(main, ["validate", "--checkpoint", str(tiny["ck"]), "--onnx", str(half), "--backends", "ort-cpu",
                                    "--sizes", "28,40x56", "--batch", "2,3", "--tol", "rel_l2=none", "--tol", "cosine=none",
                                    "--tol", "top1=none", "--warmup", "0", "--iters", "2", "--out", str(tmp_path / "rep")])
    assert res.exit_code == 1 and "constant output" in res.output, res.output


# ---------------------------------------------------------------------------------------------
# 12. eval counts NaN/Inf logits and fails on them
# ---------------------------------------------------------------------------------------------


@needs_fashion
def test_eval_counts_nonfinite_logits_per_image_and_fails(tiny: dict[str, Path], tmp_path: Path):
    """An ONNX whose logits become NaN for every image darker than a threshold (``logits + 0 * log(mean(x) - t)``)
    and stay exact otherwise; ``nonfinite`` must equal the count of such images, worked out here from the IDX file and
    the checkpoint's mean/std, and the row must fail naming NaN/Inf.

    Planted, each caught: ``nonfinite += 0`` in rn_deploy/evaluate/predict.py predict_split (the count stayed 0); the
    ``if nonfinite:`` failure dropped from rn_deploy/evaluate/gates.py judge (the row failed only on agreement, not naming
    NaN/Inf)."""
    from rn_deploy.datasets.sources import load_split
    from rn_deploy.evaluate import run_eval

    limit = 300
    cfg = load_checkpoint(tiny["ck"]).config
    pixels = read_idx_images(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    index = load_split("fashion-mnist", None, "test", limit=limit, seed=0).index
    chosen = pixels if index is None else pixels[index.numpy()]
    means = ((chosen.astype(np.float64) - 255 * cfg.mean[0]) / (255 * cfg.std[0])).mean(axis=(1, 2))
    s = np.sort(means)
    gap = int(np.argmax(np.diff(s[limit // 4 : 3 * limit // 4]))) + limit // 4  # a threshold far from any image's mean
    t = float((s[gap] + s[gap + 1]) / 2)
    expected = int((means < t).sum())
    assert 0 < expected < limit

    nodes = [helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=0),  # opset >= 18: axes as an input
             helper.make_node("Sub", ["m", "t"], ["d"]),
             helper.make_node("Log", ["d"], ["logd"]),  # NaN where d < 0
             helper.make_node("Mul", ["logd", "zero"], ["z"]),  # 0 * finite = 0, 0 * NaN = NaN
             helper.make_node("Unsqueeze", ["z", "one_axis"], ["z1"]),
             helper.make_node("Add", ["logits_pre", "z1"], ["logits"])]
    inits = [numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"), numpy_helper.from_array(np.array(t, np.float32), "t"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"), numpy_helper.from_array(np.array([1], np.int64), "one_axis")]
    nan_onnx = _rewire(tiny["onnx"], tmp_path / "nan_dark.onnx", nodes, inits)

    report, _files = run_eval(tiny["ck"], onnx=[nan_onnx], dataset="fashion-mnist", limit=limit, seed=0, backends=["ort-cpu"],
                              max_drop=100.0, out_dir=tmp_path / "eval", progress=False)
    row = next(r for r in report["artifacts"] if r["path"] == str(nan_onnx))
    assert row["nonfinite"] == expected, (row["nonfinite"], expected)
    assert report["artifacts"][0]["nonfinite"] == 0  # the reference (PyTorch) has none
    assert row["passed"] is False and report["passed"] is False
    assert any(f"{expected} image(s) gave NaN/Inf" in f for f in row["failures"]), row["failures"]
    assert row["correct"] <= limit - expected  # a NaN row is never counted right


# ---------------------------------------------------------------------------------------------
# 13. quantize calibrates on the training split and is judged on the held-out one
# ---------------------------------------------------------------------------------------------


@needs_fashion
@requires(HAS_MODELOPT, "nvidia-modelopt not installed (tools/setup.sh installs it with --no-deps)")
def test_quantize_calibration_images_are_training_images_and_never_gate_images(tiny: dict[str, Path], tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch):
    """The calibration array quantize hands to the quantizer, turned back into pixels with the checkpoint's mean/std,
    must be images of the TRAINING IDX file and none of the images the gate judges, which must be TEST images.

    Planted, each caught: ``load_split(opts.calib, opts.data, eval_split, ...)`` for the calibration pool in
    rn_deploy/quantize/workflow.quantize (calibration on the held-out split); the gate loaded from ``"train"``."""
    import rn_deploy.quantize as q

    seen: dict[str, list[Any]] = {"calib": [], "gate": []}
    real_quantize_file, real_evaluate = q.quantize_file, q.evaluate_onnx

    def spy_quantize_file(src: Path, dst: Path, calib: np.ndarray, **kw: Any) -> None:
        seen["calib"].append(np.array(calib, copy=True))
        real_quantize_file(src, dst, calib, **kw)

    def spy_evaluate(path: Path, images: Any, cfg: Any, batch: int = 256) -> Any:
        seen["gate"].append(images.images.numpy().copy())
        return real_evaluate(path, images, cfg, batch)

    # where the workflow and the gate look them up (rn_deploy/quantize/workflow.py, gate.py)
    monkeypatch.setattr(q.gate, "quantize_file", spy_quantize_file)
    monkeypatch.setattr(q.gate, "evaluate_onnx", spy_evaluate)
    monkeypatch.setattr(q.workflow, "evaluate_onnx", spy_evaluate)
    opts = q.QuantizeOptions(calib="fashion-mnist", calib_size=64, eval_limit=120, max_drop=100.0, min_agreement={"int8": 0.0},
                             ladder=False)  # the images are checked here, not the gate
    q.quantize(tiny["onnx"], tmp_path / "m.int8.onnx", opts)

    cfg = load_checkpoint(tiny["ck"]).config
    assert len(seen["calib"]) == 1 and seen["gate"]
    calib = np.rint(seen["calib"][0][:, 0] * 255 * cfg.std[0] + 255 * cfg.mean[0]).astype(np.uint8)  # back to pixels
    assert calib.shape == (64, 28, 28)
    train = {im.tobytes() for im in read_idx_images(FASHION_DIR / "train-images-idx3-ubyte.gz")}
    test = {im.tobytes() for im in read_idx_images(FASHION_DIR / "t10k-images-idx3-ubyte.gz")}
    calib_set = {im.tobytes() for im in calib}
    gate_set = {im.tobytes() for g in seen["gate"] for im in g[:, 0]}
    assert len(calib_set) == 64 and len(gate_set) == 120
    assert calib_set <= train, f"{len(calib_set - train)} calibration images are not training images"
    assert gate_set <= test, f"{len(gate_set - test)} gate images are not test images"
    # Disjoint, up to images that Fashion-MNIST itself stores in both files.
    assert calib_set & gate_set <= train & test
    assert len(calib_set - test) >= 60

"""Right at every size it accepts: per-size eval, the recorded size range and its consumers, size-robust training.

The independent answers here are a few lines each: a bilinear antialiased resize of the whole image
(``F.interpolate``), ``(pixel / 255 - mean) / std``, and ONNX Runtime or the PyTorch model run
directly; labels of the planted data set are the model's own predictions, so the right accuracy at
each size is known by construction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from rn_deploy import names
from rn_deploy.checkpoint import load_checkpoint, save_checkpoint
from rn_deploy.cli import main
from rn_deploy.sizes import measure_range, outside_warning, policy_text, record_range, size_range, sizes_from, target_size
from tests.conftest import FASHION_DIR, make_model, needs_fashion

N_SAME, N_DIFFER = 20, 20
DAMAGE = 3.0  # a conv weight scaled by this: the ONNX still runs, and picks another class on some images


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """The documented deployer's resize of a square float NCHW batch: whole image, bilinear, antialiased."""
    return x if x.shape[-1] == side else F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def _norm(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (x / 255 - m) / s


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random 2-class mnist_resnet and an MNIST-PNG test split labelled with its own 28 px predictions.

    20 images keep their class at 56 px and 20 change it, so the model is 100% accurate at 28 px and
    exactly 50% at 56 px, by construction. Only images whose top-2 logits differ by > 1e-3 at both
    sizes are used, so an exact FP32 artifact agrees with the reference everywhere.
    """
    out = tmp_path_factory.mktemp("planted")
    model, cfg = make_model("mnist_resnet", n_classes=2, in_channels=1, size=28, seed=1)
    model.eval()
    g = torch.Generator().manual_seed(0)
    imgs = F.interpolate(torch.randint(0, 256, (400, 1, 7, 7), generator=g).float(), size=(28, 28), mode="bilinear",
                         align_corners=False).round().clamp(0, 255)
    with torch.no_grad():
        l28, l56 = (model(_norm(_resize(imgs, s), cfg.mean, cfg.std)) for s in (28, 56))
    margin = [(v := lg.topk(2, 1).values)[:, 0] - v[:, 1] for lg in (l28, l56)]
    ok = (margin[0] > 1e-3) & (margin[1] > 1e-3)
    p28, p56 = l28.argmax(1), l56.argmax(1)
    same = torch.nonzero(ok & (p28 == p56)).flatten()[:N_SAME]
    differ = torch.nonzero(ok & (p28 != p56)).flatten()[:N_DIFFER]
    assert len(same) == N_SAME and len(differ) == N_DIFFER
    data = out / "data"
    for k in range(2):  # both classes occur in the test split (seed 1: class 0 flips at 56 px, class 1 does not)
        (data / "training" / str(k)).mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(data / "training" / str(k) / "0.png")
    for i in torch.cat([same, differ]).tolist():
        folder = data / "testing" / str(int(p28[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i, 0].numpy().astype(np.uint8)).save(folder / f"{i:03d}.png")
    ckpt = save_checkpoint(out / "model.pt", model, cfg, {"note": "planted: labels are its own 28 px predictions"})
    from rn_deploy.export import export_onnx

    onnx_path = Path(export_onnx(ckpt, out / "model.onnx", verify=False).onnx_path)
    return {"ckpt": ckpt, "onnx": onnx_path, "data": data, "dir": out}


def test_eval_reports_the_artifact_failing_at_the_size_where_it_fails(planted: dict[str, Path], tmp_path: Path):
    """Planted bug this catches: judging only at the training size (or only on parity) passes this model at 56 px."""
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(planted["ckpt"]), "--onnx", str(planted["onnx"]), "--dataset", "mnist",
                                  "--data", str(planted["data"]), "--scales", "1,2", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 1, r.output
    rep = json.loads(r.stdout)
    sec = rep["sizes"]
    assert rep["passed"] is False and sec["passed"] is False and sec["sizes"] == [28, 56]
    assert sec["train_size"] == [28, 28] and sec["size_drop_points"] == 1.0 and "bilinear, antialiased" in sec["resampling"]
    assert sec["reference_train_top1"] == 1.0 and sec["measured_range"] == [28, 28] and sec["recorded"] is False
    ref, art = sec["artifacts"]
    assert ref["name"] == "reference" and art["name"].startswith("model.onnx")
    for a in (ref, art):
        c28, c56 = a["per_size"]
        assert (c28["size"], c28["hw"], c56["size"], c56["hw"]) == (28, [28, 28], 56, [56, 56])
        assert (c28["correct"], c28["count"], c28["top1"], c28["passed"]) == (40, 40, 1.0, True)
        assert (c56["correct"], c56["top1"], c56["drop_points"], c56["passed"]) == (20, 0.5, 50.0, False)
        assert a["failing_sizes"] == [56] and a["passed"] is False
        assert "at 56 px: top-1 50.00% is 50.00 points below the reference at the training size" in c56["failures"][0]
    # parity holds at both sizes: the failure is accuracy, not a broken artifact
    assert [c["agreement"] for c in art["per_size"]] == [1.0, 1.0] and len(art["per_size"][1]["failures"]) == 1
    assert rep["artifacts"][1]["passed"] is True  # the training-size verdict alone would have passed it
    md = (tmp_path / "eval.md").read_text()
    assert "## Accuracy across sizes" in md and "| 100.00 (100.0) | 50.00 (100.0) FAIL |" in md
    assert (tmp_path / "sizes.png").read_bytes()[:4] == b"\x89PNG" and rep["files"]["sizes"] == str(tmp_path / "sizes.png")
    assert json.loads((tmp_path / "eval.json").read_text())["sizes"] == sec


def test_record_range_writes_the_checkpoint_and_export_carries_it(planted: dict[str, Path], tmp_path: Path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(planted["ckpt"].read_bytes())
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(ckpt), "--dataset", "mnist", "--data", str(planted["data"]),
                                  "--sizes", "27,29", "--range-drop", "100", "--size-drop", "100", "--record-range", "--out",
                                  str(tmp_path)])
    assert r.exit_code == 0, r.output  # 27 and 29 px are not 28 px (the labels hold at 28 only): passing with --size-drop 100
    cfg = load_checkpoint(ckpt).config
    raw = torch.load(ckpt, weights_only=True)
    assert cfg.size_range == [27, 29], r.output
    assert raw["train"]["sizes"]["range"] == [27, 29] and raw["train"]["sizes"]["by"] == "eval"
    assert raw["train"]["sizes"]["sizes"] == [27, 28, 29] and raw["train"]["sizes"]["top1"][1] == 1.0
    from rn_deploy.export import export_onnx
    from rn_deploy.onnxfile import read_onnx_config

    onnx_cfg = read_onnx_config(export_onnx(ckpt, tmp_path / "model.onnx", verify=False).onnx_path)
    assert onnx_cfg is not None and onnx_cfg.size_range == [27, 29]
    r = CliRunner().invoke(main, ["inspect", str(ckpt)])
    assert "size_range: 27-29 px short side (measured)" in r.output
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(ckpt), "--dataset", "mnist", "--data", str(planted["data"]),
                                  "--record-range"])
    assert r.exit_code == 2 and "needs --sizes or --scales" in r.output


def _relabelled_at(planted: dict[str, Path], side: int, dest: Path) -> Path:
    """planted's images labelled with the model's own predictions at ``side`` px (32: both classes occur, and some images
    change class from 28 px): the best size is ``side``, not 28."""
    ck = load_checkpoint(planted["ckpt"])
    for png in sorted((planted["data"] / "testing").rglob("*.png")):
        x = torch.from_numpy(np.array(Image.open(png))).float()[None, None]
        with torch.no_grad():
            label = int(ck.model.eval()(_norm(_resize(x, side), ck.config.mean, ck.config.std)).argmax(1))
        (dest / "testing" / str(label)).mkdir(parents=True, exist_ok=True)
        (dest / "testing" / str(label) / png.name).write_bytes(png.read_bytes())
    for k in range(2):
        (dest / "training" / str(k)).mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(dest / "training" / str(k) / "0.png")
    return dest


@pytest.mark.parametrize("case", ["failing-verdict", "excludes-training-size"])
def test_record_range_always_measures_the_training_size_and_refuses_a_bad_range(planted: dict[str, Path], tmp_path: Path, case: str):
    """Planted (issue 32 item 8): `--sizes 56 --record-range` on this 28 px model exited 1 yet recorded [56, 56] (56 was the
    only size measured); and a passing run whose best size is not the training size recorded a range without it. Now the
    training size is always measured, and neither range reaches the checkpoint: one line says why, exit 1."""
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(planted["ckpt"].read_bytes())
    before = ckpt.read_bytes()
    data = planted["data"] if case == "failing-verdict" else _relabelled_at(planted, 32, tmp_path / "data32")
    extra = [] if case == "failing-verdict" else ["--size-drop", "100"]  # every size passes: only the range is wrong
    side = 56 if case == "failing-verdict" else 32
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(ckpt), "--dataset", "mnist", "--data", str(data), "--sizes", str(side),
                                  "--record-range", "--out", str(tmp_path / "out"), "--json", *extra])
    assert r.exit_code == 1, r.output
    sec = json.loads(r.stdout)["sizes"]
    assert sec["sizes"] == [28, side] and sec["recorded"] is False
    assert ckpt.read_bytes() == before and load_checkpoint(ckpt).config.size_range is None
    lines = [ln.removeprefix("error: ") for ln in r.stderr.splitlines() if "not recording the size range" in ln]
    assert len(lines) == 1 and lines[0] == sec["not_recorded"], r.stderr
    if case == "failing-verdict":
        assert sec["measured_range"] == [28, 28] and "the verdict failed (reference at 56 px" in lines[0]
        assert "also measuring the training size 28 px" in r.stderr
    else:
        assert sec["passed"] is True and sec["measured_range"] == [32, 32]
        assert "it leaves out the training size 28 px" in lines[0]
        assert r.output.strip().splitlines()[-1] == f"error: {lines[0]}"
    assert f"{sec['not_recorded']}." in (tmp_path / "out" / "eval.md").read_text()


def test_recorded_range_reaches_export_triton_engine_and_serve(planted: dict[str, Path], tmp_path: Path):
    import onnxruntime as ort

    from rn_deploy import Engine
    from rn_deploy.export import export_onnx
    from rn_deploy.serve import Classifier
    from rn_deploy.triton import export_triton

    cfg = load_checkpoint(planted["ckpt"]).config
    imgs = [np.random.default_rng(i).integers(0, 256, (s, s, 1), dtype=np.uint8) for i, s in enumerate((40, 100, 10, 28))]
    sess = ort.InferenceSession(str(planted["onnx"]), providers=["CPUExecutionProvider"])

    def expected(sides: list[int]) -> np.ndarray:
        rows = []
        for img, side in zip(imgs, sides, strict=True):
            x = _norm(_resize(torch.from_numpy(img).permute(2, 0, 1)[None].float(), side), cfg.mean, cfg.std)
            rows.append(torch.from_numpy(sess.run(None, {names.INPUT: x.numpy()})[0]).softmax(1)[0].numpy())
        return np.stack(rows)

    # no range recorded: everything goes to the training size, and the policy says so
    with Engine.load(planted["onnx"], provider="cpu") as eng:
        np.testing.assert_allclose(Classifier(eng).probabilities(imgs), expected([28, 28, 28, 28]), atol=1e-5)
    pre = json.loads((export_triton(planted["onnx"], tmp_path / "r0", "m") / "rn-deploy.json").read_text())["preprocessing"]
    assert pre["size_range"] is None and pre["size_policy"].startswith("resize every image to the training size 28x28")

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(planted["ckpt"].read_bytes())
    record_range(ckpt, (20, 56), {"by": "test"})
    onnx_path = export_onnx(ckpt, tmp_path / "model.onnx", verify=False).onnx_path
    pre = json.loads((export_triton(onnx_path, tmp_path / "r1", "m") / "rn-deploy.json").read_text())["preprocessing"]
    assert pre["size_range"] == [20, 56]
    assert pre["size_policy"].startswith("resize so the short side lies in 20-56 px (the measured range; an image already inside")
    want = expected([40, 56, 20, 28])  # 40 and 28 kept, 100 down to 56, 10 up to 20
    with Engine.load(onnx_path, provider="cpu") as eng:
        np.testing.assert_allclose(Classifier(eng).probabilities(imgs), want, atol=1e-5)
        preds = eng.predict(imgs)
        assert [p.index for p in preds] == want.argmax(1).tolist()
        np.testing.assert_allclose([p.score for p in preds], want.max(1), atol=1e-5)
        # the answer for one image does not depend on its batch mates
        np.testing.assert_allclose(eng.predict([imgs[1]])[0].score, want[1].max(), atol=1e-5)


def test_validate_and_doctor_state_the_range(planted: dict[str, Path]):
    lines: list[str] = []
    from rn_deploy.validate import run_validation

    run_validation(planted["ckpt"], backends=["torch"], sizes=[(28, 28), (56, 56)], batches=(1,), warmup=0, iters=1, log=lines.append)
    warn = [ln for ln in lines if ln.startswith("warning:")]
    assert len(warn) == 1 and "56x56" in warn[0] and "28x28" not in warn[0] and "outside the model's size range 28 px" in warn[0]
    r = CliRunner().invoke(main, ["doctor", str(planted["onnx"])])
    assert "sizes: 28 px (the training size; no size range measured" in r.output


def test_range_rules_against_hand_computed_answers():
    curve = {20: 0.70, 24: 0.745, 28: 0.75, 37: 0.742, 56: 0.60, 64: 0.749}
    assert measure_range(curve, 1.0) == (24, 37)  # 20 is 5 pts down; 64 is within but cut off by 56
    assert measure_range(curve, 0.5) == (24, 28) and measure_range(curve, 0.4) == (28, 28)  # 0.5 pt down is inside
    assert measure_range({20: 0.5, 28: 0.5}, 1.0, prefer=28) == (20, 28)
    assert sizes_from([28, 28], [20], [0.75, 1, 2]) == [20, 21, 28, 56]
    _, cfg = make_model("mnist_resnet", n_classes=10, in_channels=1, size=28)
    assert size_range(cfg).describe().startswith("28 px (the training size")
    assert [target_size(cfg, h, w) for h, w in ((10, 10), (64, 30), (28, 28))] == [(28, 28)] * 3
    cfg.size_range = [20, 56]
    assert [target_size(cfg, h, w) for h, w in ((10, 10), (64, 30), (100, 200), (40, 40))] == [(20, 20), (30, 30), (56, 56), (40, 40)]
    assert outside_warning(cfg, [(20, 20), (56, 90)], "x") is None
    assert "19x19" in (outside_warning(cfg, [(19, 19), (57, 57)], "x") or "") and "57x57" in (outside_warning(cfg, [(57, 57)], "x") or "")
    assert "20-56 px" in policy_text(cfg.to_dict(), "any HxW of at least 1x1")
    with pytest.raises(Exception, match="size_range"):
        type(cfg).from_dict({**cfg.to_dict(), "size_range": [30, 20]})


@needs_fashion
def test_multi_scale_training_varies_sizes_and_records_the_range_it_measured(tmp_path: Path):
    from rn_deploy.train import TrainConfig, fit
    from rn_deploy.train.data import DeviceLoader

    from rn_deploy.datasets.sources import load_fashion_mnist

    train = load_fashion_mnist(FASHION_DIR, "train").subset(256, 0)
    dl = DeviceLoader(train, 32, (28, 28), torch.device("cpu"), train=True, multi_scale=(20, 36))
    shapes = {tuple(x.shape[-2:]) for x, _ in dl}
    assert len(shapes) > 2 and all(20 <= h == w <= 36 for h, w in shapes)

    res = fit(TrainConfig(arch="mnist_resnet", dataset="fashion-mnist", data=str(FASHION_DIR), epochs=1, batch_size=32, size=28,
                          device="cpu", out=str(tmp_path), limit=256, multi_scale=(20, 36), range_sizes=[20, 28, 36]), progress=False)
    ck = load_checkpoint(res.checkpoint)
    rec = ck.train["sizes"]
    assert rec["sizes"] == [20, 28, 36] and rec["by"] == "train" and rec["count"] == 256
    assert ck.config.size_range == rec["range"] == list(measure_range(dict(zip(rec["sizes"], rec["top1"], strict=True)), 1.0, prefer=28))
    assert ck.train["options"]["multi_scale"] == [20, 36] or ck.train["options"]["multi_scale"] == (20, 36)
    # the recorded figure is what the model does on those images at that size (independent resize + the model)
    val = load_fashion_mnist(FASHION_DIR, "test").subset(256, 0)
    with torch.no_grad():
        pred = ck.model(_norm(_resize(val.images.float(), 36), ck.config.mean, ck.config.std)).argmax(1)
    assert rec["top1"][2] == pytest.approx(float((pred == val.labels).float().mean()), abs=1e-9)


def test_eval_sizes_applies_min_agreement_as_eval_does(planted: dict[str, Path], tmp_path: Path):
    """Planted (issue 32 item 9): eval --sizes judged parity at each size with the default agreement, ignoring
    --min-agreement: an FP32 ONNX that eval passes with `--min-agreement fp32=0` failed at its own training size."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(planted["onnx"]))
    weight = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    init = next(t for t in m.graph.initializer if t.name in weight)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(DAMAGE), init.name))
    bad = tmp_path / "damaged.onnx"
    onnx.save(m, str(bad))
    base = ["eval", "--checkpoint", str(planted["ckpt"]), "--onnx", str(bad), "--dataset", "mnist", "--data", str(planted["data"]),
            "--sizes", "28", "--max-drop", "100", "--size-drop", "100", "--json"]
    r = CliRunner().invoke(main, [*base, "--min-agreement", "fp32=0", "--out", str(tmp_path / "loose")])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    agree = rep["artifacts"][1]["agreement"]
    assert 0.5 < agree < 0.95 and rep["sizes"]["artifacts"][1]["per_size"][0]["agreement"] == agree
    between = f"fp32={(agree + 1) / 2:.3f}"  # clearly above what it reaches: eval and eval --sizes both fail it
    r = CliRunner().invoke(main, [*base, "--min-agreement", between, "--out", str(tmp_path / "strict")])
    assert r.exit_code == 1, r.output
    rep = json.loads(r.stdout)
    assert not rep["artifacts"][1]["passed"] and rep["sizes"]["artifacts"][1]["failing_sizes"] == [28]
    assert "agrees with the reference" in rep["sizes"]["artifacts"][1]["per_size"][0]["failures"][0]

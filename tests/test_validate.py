from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from rn_deploy import Engine
from rn_deploy.checkpoint import load_checkpoint
from rn_deploy.cli import main
from rn_deploy.errors import RnDeployError
from rn_deploy.export import export_onnx
from rn_deploy.metrics import parity
from rn_deploy.runners import OrtRunner, RunnerUnavailable, TorchRunner
from rn_deploy.validate import default_grid, parse_tolerance_overrides, validate

from .conftest import HAS_CUDA, make_checkpoint, needs_gpu, ort_cuda


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("v")
    ck = make_checkpoint(d / "model.pt", arch="resnet18", n_classes=5, size=48)
    onnx32 = Path(export_onnx(ck, d / "model.onnx", verify=False).onnx_path)
    onnx16 = Path(export_onnx(ck, d / "model.fp16.onnx", fp16=True, verify=False).onnx_path)
    other = make_checkpoint(d / "other.pt", arch="resnet18", n_classes=5, size=48, seed=1)
    wrong = Path(export_onnx(other, d / "wrong.onnx", verify=False).onnx_path)
    return {"ck": ck, "onnx": onnx32, "onnx16": onnx16, "wrong": wrong, "dir": d}


def test_parity_metrics_on_known_values():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    p = parity(ref, ref + np.array([[0.0, 0.0, 0.1], [0.0, 0.0, 0.0]]))
    assert p.max_abs == pytest.approx(0.1) and p.top1 == 1.0 and p.finite
    assert p.rel_l2 == pytest.approx(0.1 / np.linalg.norm(ref))
    flipped = parity(ref, ref[::-1].copy())
    assert flipped.top1 == 0.0 and flipped.cosine < 0.8
    assert not parity(ref, np.full_like(ref, np.nan)).finite


def test_runners_agree(art: dict[str, Path]):
    x = torch.randn(2, 3, 61, 83)
    with TorchRunner(art["ck"]) as t, OrtRunner(art["onnx"]) as o, OrtRunner(art["onnx16"]) as h:
        ref = t.infer(t.prepare(x)).numpy()
        assert parity(ref, o.infer(o.prepare(x)).numpy()).rel_l2 < 1e-5
        assert h.precision == "fp16" and parity(ref, h.infer(h.prepare(x)).numpy()).rel_l2 < 2e-2
    if not HAS_CUDA:  # with a GPU, test_gpu_runners_agree_with_reference runs this path
        with pytest.raises(RunnerUnavailable, match="CUDA|CUDAExecutionProvider"):
            OrtRunner(art["onnx"], provider="cuda")


def test_validate_passes_reports_and_times(art: dict[str, Path]):
    ref = TorchRunner(art["ck"])
    runners = [OrtRunner(art["onnx"]), OrtRunner(art["onnx16"])]
    grid = [(1, 48, 48), (3, 97, 211)]
    rep = validate(ref, runners, grid, channels=3, warmup=1, iters=3, skipped={"trt": "no GPU"})
    assert rep.passed and bool(rep)
    assert len(rep.cells) == 4 and all(c.latency and c.latency.p50_ms > 0 for c in rep.cells)
    assert rep.backends["trt"] == {"ran": False, "reason": "no GPU"}
    fp16 = [c for c in rep.cells if c.precision == "fp16"]
    assert fp16[0].tolerance["rel_l2"] == 2e-2 and fp16[0].parity["rel_l2"] > 1e-6
    json.dumps(rep.to_dict())  # JSON-able
    strict = validate(ref, runners[1:], grid, channels=3, warmup=0, iters=1, tolerances={"fp16": {"rel_l2": 1e-9}})
    assert not strict.passed and "rel_l2" in strict.cells[0].failures[0]


def test_cli_validate_writes_report_and_exit_codes(art: dict[str, Path], tmp_path: Path):
    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["validate", "--checkpoint", str(art["ck"]), "--onnx", str(art["onnx"]), "--sizes", "48,97x211",
                                    "--batch", "1,2", "--iters", "2", "--warmup", "0", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["passed"] and d["format"] == "rn-deploy-report/2"
    ran = {c["backend"] for c in d["cells"] if c["skipped"] is None}
    assert "ort-cpu-fp32" in ran and ran & {"torch-cpu-fp32", "torch-cuda-fp32"}
    if not HAS_CUDA:
        assert d["backends"]["ort-cuda"]["ran"] is False and "CUDA" in d["backends"]["ort-cuda"]["reason"]
    for f in ("report.json", "report.md", "latency.png", "parity.png"):
        assert (out / f).stat().st_size > 200
    assert Image.open(out / "latency.png").size[0] > 400
    assert "| `ort-cpu-fp32` | 2x97x211 |" in (out / "report.md").read_text()
    # another checkpoint's ONNX is refused up front; allowed, it is compared and fails on parity
    bad = CliRunner().invoke(main, ["validate", "--checkpoint", str(art["ck"]), "--onnx", str(art["wrong"]), "--backends", "ort-cpu",
                                    "--sizes", "48", "--batch", "1", "--iters", "1", "--out", str(tmp_path / "bad"),
                                    "--allow-other-source"])
    assert bad.exit_code == 1 and "cells out of tolerance" in bad.output
    assert json.loads((tmp_path / "bad" / "report.json").read_text())["passed"] is False


def test_cli_validate_usage_errors(art: dict[str, Path]):
    res = CliRunner().invoke(main, ["validate", "--checkpoint", str(art["ck"]), "--backends", "tensorflow"])
    assert res.exit_code == 2 and "unknown backend" in res.output  # a usage error
    res = CliRunner().invoke(main, ["validate", "--checkpoint", str(art["ck"]), "--batch", "0"])
    assert res.exit_code == 2
    with pytest.raises(RnDeployError, match="rel_l2"):
        parse_tolerance_overrides(["l2=3"])
    assert parse_tolerance_overrides(["fp16.cosine=0.99", "rel_l2=1e-2"])["fp16"] == {"cosine": 0.99, "rel_l2": 1e-2}


def test_default_grid_has_odd_sizes_and_batches():
    g = default_grid([48, 48], 32, batches=(1, 8))
    assert (1, 97, 211) in g and (8, 48, 48) in g and len({(h, w) for _, h, w in g}) == 3


def test_engine_api_predict_on_onnx(art: dict[str, Path]):
    ck = load_checkpoint(art["ck"])
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (60, 70, 3), dtype=np.uint8), rng.integers(0, 255, (90, 50, 3), dtype=np.uint8),
            rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)]
    with Engine.load(art["onnx"]) as eng:
        preds = eng.predict(imgs, top_k=3)
        assert len(preds) == 3 and all(len(p.probs) == 3 for p in preds)
        th, tw = ck.config.image_size
        for img, p in zip(imgs, preds, strict=True):  # order kept
            # The evaluation policy by hand: short side resized to cover the training size, centre crop.
            t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
            s = max(th / t.shape[2], tw / t.shape[3])
            nh, nw = max(th, round(t.shape[2] * s)), max(tw, round(t.shape[3] * s))
            t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            t = t[:, :, (nh - th) // 2 : (nh - th) // 2 + th, (nw - tw) // 2 : (nw - tw) // 2 + tw]
            x = (t / 255 - torch.tensor(ck.config.mean).view(1, 3, 1, 1)) / torch.tensor(ck.config.std).view(1, 3, 1, 1)
            with torch.no_grad():
                probs = ck.model(x).softmax(1)[0]
            assert p.index == int(probs.argmax()) and p.score == pytest.approx(float(probs.max()), abs=1e-4)
            assert p.label == ck.config.class_names[p.index]
        with pytest.raises(RnDeployError, match="has 1 channel.*takes 3.*convert"):
            eng.predict([np.zeros((40, 40), np.uint8)])
        nan = torch.full((1, 3, 40, 40), float("nan"))
        assert not torch.isfinite(eng.logits(nan)).all()  # raw tensors pass through; validate reports non-finite


def test_engine_load_errors(tmp_path: Path, art: dict[str, Path]):
    with pytest.raises(RnDeployError, match="no such file"):
        Engine.load(tmp_path / "nope.engine")
    import onnx

    m = onnx.load(str(art["onnx"]))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "bare.onnx"))
    with pytest.raises(RnDeployError, match="no rn-deploy metadata"):
        Engine.load(tmp_path / "bare.onnx")


@pytest.mark.gpu
@needs_gpu
def test_gpu_runners_agree_with_reference(art: dict[str, Path]):
    x = torch.randn(4, 3, 97, 211)
    ref = TorchRunner(art["ck"]).infer(torch.clone(x)).numpy()
    half = TorchRunner(art["ck"], device="cuda", precision="fp16")
    assert parity(ref, half.infer(half.prepare(x)).cpu().numpy()).rel_l2 < 2e-2
    for onnx_path, tol in ((art["onnx"], 1e-3), (art["onnx16"], 2e-2)):
        for graph in (False, True):
            r = ort_cuda(onnx_path, cuda_graph=graph)
            for _ in range(4):  # ORT runs regularly first and captures later: the fourth call replays
                out = r.infer(r.prepare(x)).cpu().numpy()
                assert parity(ref, out).rel_l2 < tol, (onnx_path.name, graph)
    eng = Engine.load(art["onnx16"], cuda_graph=True)
    assert eng.runner.device == "cuda"
    assert len(eng.predict([np.zeros((64, 64, 3), np.uint8)] * 3)) == 3

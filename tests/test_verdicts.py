"""Honest verdicts (issues 11 and 18): no pass without a comparison, metrics that can fail, compare
and benchmark as two steps, owned outputs, a pool of runners, one preprocessing, artifacts judged
or said not to be, reports that identify what they judged, plots that read."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from rn_deploy import Engine
from rn_deploy.benchmark import MIN_TIMED_CALLS, benchmark, noise_flag
from rn_deploy.checkpoint import ModelConfig, save_checkpoint
from rn_deploy.cli import main
from rn_deploy.compare import DEFAULT_TOLERANCES, compare_runner, effective_tolerances, is_reference_twin
from rn_deploy.demo import verdict_line
from rn_deploy.errors import EngineCompatibilityError
from rn_deploy.export import export_onnx
from rn_deploy.metrics import parity
from rn_deploy.models import create_model
from rn_deploy.report import latency_points, markdown, parity_matrix, write_report
from rn_deploy.results import NOTHING_COMPARED, NOTHING_COMPARED_ONNX
from rn_deploy.runners import OrtRunner, TorchRunner
from rn_deploy.runners.lru import ShapeLRU
from rn_deploy.runners.trt import torch_dtype
from rn_deploy.validate import validate

from .conftest import (
    FASHION_DIR,
    HAS_CUDA,
    HAS_TRT,
    HAS_TRT_RTX,
    make_checkpoint,
    needs_fashion,
    needs_gpu,
    ort_cuda,
    requires,
    skip,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mnist_resnet, 10 classes, 1 channel, 28 px: a checkpoint, its ONNX, and an ONNX whose output is all zeros."""
    d = tmp_path_factory.mktemp("verdicts")
    ck = make_checkpoint(d / "m.pt", arch="mnist_resnet", n_classes=10, in_channels=1, size=28)
    onnx_path = Path(export_onnx(ck, d / "m.onnx", verify=False).onnx_path)
    return {"ck": ck, "onnx": onnx_path, "dead": _scaled(onnx_path, d / "dead.onnx", 0.0),
            "negated": _scaled(onnx_path, d / "negated.onnx", -1.0), "dir": d}


def _scaled(src: Path, dst: Path, factor: float) -> Path:
    """``src`` with its logits multiplied by ``factor`` before they leave the graph (same metadata, same I/O).

    ``factor=0`` is a dead engine: every output is zero."""
    m = onnx.load(str(src))
    out = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [f"{o}_pre" if o == out else o for o in node.output]
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array(factor, np.float32), "scale_factor"))
    m.graph.node.append(onnx.helper.make_node("Mul", [f"{out}_pre", "scale_factor"], [out]))
    onnx.save(m, str(dst))
    return dst


def _validate_cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["validate", *args, "--warmup", "0", "--iters", "2"])


# ---------------------------------------------------------------------------------------------
# 11.1 no pass without a comparison
# ---------------------------------------------------------------------------------------------


def test_checkpoint_alone_compares_nothing_and_fails(tiny: dict[str, Path], tmp_path: Path):
    res = _validate_cli("--checkpoint", str(tiny["ck"]), "--sizes", "28", "--batch", "1", "--out", str(tmp_path))
    rep = json.loads((tmp_path / "report.json").read_text())
    if HAS_CUDA:  # torch-cuda-fp32 is another device: an independent comparison
        assert res.exit_code == 0 and any(c["compared"] for c in rep["cells"])
        return
    assert res.exit_code == 1, res.output
    err = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "nothing was compared" in err[0] and "--onnx" in err[0] and "onnxruntime-gpu" in err[0]
    assert rep["passed"] is False and rep["failure"] == NOTHING_COMPARED
    (cell,) = rep["cells"]
    assert cell["backend"] == "torch-cpu-fp32" and cell["compared"] is False and cell["parity"] is None
    assert cell["latency"]["p50_ms"] > 0  # timed all the same
    assert rep["backends"]["torch-cpu-fp32"]["compared"] is False
    assert "timed only (the reference itself)" in (tmp_path / "report.md").read_text()


def test_onnx_alone_that_compares_nothing_does_not_ask_for_onnx(tiny: dict[str, Path], tmp_path: Path):
    """Without --checkpoint the --onnx is the reference: the failure must not say "pass --onnx" (issue 32.12).

    ``--backends ort-cpu`` is the reference's twin on any machine; the default backends compare nothing on a CPU."""
    runs = [("--backends", "ort-cpu")] + ([] if HAS_CUDA else [()])
    for extra in runs:
        out = tmp_path / str(len(extra))
        res = _validate_cli("--onnx", str(tiny["onnx"]), "--sizes", "28", "--batch", "1", "--out", str(out), *extra)
        assert res.exit_code == 1, res.output
        err = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and "nothing was compared" in err[0], res.output
        assert "PyTorch FP32 reference itself" not in err[0] and "--checkpoint" in err[0]
        rep = json.loads((out / "report.json").read_text())
        assert rep["failure"] == NOTHING_COMPARED_ONNX and rep["reference"].startswith("ort-cpu")


def test_reference_twin_is_timed_not_compared(tiny: dict[str, Path]):
    ref = TorchRunner(tiny["ck"])
    twin, ort = TorchRunner(tiny["ck"]), OrtRunner(tiny["onnx"])
    assert is_reference_twin(twin, ref) and not is_reference_twin(ort, ref)
    rep = validate(ref, [twin, ort], [(1, 28, 28)], channels=1, warmup=0, iters=1)
    by = {c.backend: c for c in rep.cells}
    assert not by["torch-cpu-fp32"].compared and by["ort-cpu-fp32"].compared and rep.passed
    only_twin = validate(ref, [twin], [(1, 28, 28)], channels=1, warmup=0, iters=1)
    assert not only_twin.passed and only_twin.failure() == NOTHING_COMPARED


# ---------------------------------------------------------------------------------------------
# 11.2 metrics that can fail
# ---------------------------------------------------------------------------------------------


def test_constant_and_zero_outputs_have_cosine_zero_and_fail():
    ref = np.array([[1.0, 2.0, 3.0, 0.5, -1.0, 0.2], [3.0, 2.0, 1.0, 0.0, 0.1, -2.0]])
    for dead in (np.zeros_like(ref), np.full_like(ref, 0.7)):
        p = parity(ref, dead)
        assert p.cosine == 0.0 and p.constant
    assert parity(ref, ref).cosine == pytest.approx(1.0) and not parity(ref, ref).constant
    assert parity(ref[:, :5], ref[:, :5]).top5 is None  # <= 5 classes: the overlap is 1.0 by construction
    assert parity(ref, ref).top5 == 1.0
    nan = parity(ref, np.full_like(ref, np.nan)).to_dict()
    assert nan["rel_l2"] is None and json.dumps(nan, allow_nan=False)  # strict JSON


def test_zero_output_onnx_fails_even_with_every_tolerance_off(tiny: dict[str, Path], tmp_path: Path):
    res = _validate_cli("--checkpoint", str(tiny["ck"]), "--onnx", str(tiny["dead"]), "--backends", "ort-cpu", "--sizes", "28,40x56",
                        "--batch", "2", "--tol", "rel_l2=none", "--tol", "cosine=none", "--tol", "top1=none", "--out", str(tmp_path))
    assert res.exit_code == 1 and "constant output" in res.output, res.output
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["passed"] is False and all(c["parity"]["cosine"] == 0.0 for c in rep["cells"] if c["compared"])


def test_default_tolerances_include_top1(tiny: dict[str, Path]):
    assert DEFAULT_TOLERANCES["fp32"]["top1"] == 1.0 and DEFAULT_TOLERANCES["fp16"]["top1"] == 0.99
    assert effective_tolerances(None, real_images=True)["fp16"]["top1"] == 0.99
    # On random-normal inputs FP16 top-1 flips on near ties: report only, unless asked for.
    assert effective_tolerances(None, real_images=False)["fp16"]["top1"] is None
    assert effective_tolerances({"fp16": {"top1": 0.9}}, real_images=False)["fp16"]["top1"] == 0.9
    # Negated logits: with rel_l2 and cosine off, top-1 agreement alone fails them.
    rep = validate(TorchRunner(tiny["ck"]), [OrtRunner(tiny["negated"])], [(8, 28, 28)], channels=1, warmup=0, iters=1,
                   tolerances={"fp32": {"rel_l2": None, "cosine": None}})
    assert not rep.passed and [f.split()[0] for f in rep.cells[0].failures] == ["top1"]


# ---------------------------------------------------------------------------------------------
# 11.3 compare and benchmark are two steps; outputs are owned
# ---------------------------------------------------------------------------------------------


class NoCopyGraphOrtRunner(OrtRunner):
    """A real ONNX Runtime session wrapped the way a broken CUDA-graph runner behaves: the first call
    at a shape runs on the input, later calls replay on the static buffer the input was never copied
    into (zeros). Only the steady state is wrong, which is what a parity check after warm-up sees."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.static: dict[tuple[int, ...], np.ndarray] = {}

    def infer(self, prepared: Any) -> torch.Tensor:
        key = tuple(prepared.shape)
        if key not in self.static:
            self.static[key] = np.zeros_like(prepared)
            return super().infer(prepared)
        return super().infer(self.static[key])


def test_parity_comes_from_an_explicit_call_after_warm_up(tiny: dict[str, Path]):
    ref = TorchRunner(tiny["ck"])
    rep = validate(ref, [NoCopyGraphOrtRunner(tiny["onnx"])], [(2, 28, 28)], channels=1, warmup=2, iters=2)
    # The old validator compared the first call's output (correct) and passed this runner.
    assert not rep.passed and rep.cells[0].failures, rep.cells[0].parity


def test_benchmark_and_compare_are_separate_steps(tiny: dict[str, Path]):
    calls: list[str] = []

    class Counting(OrtRunner):
        def infer(self, prepared: Any) -> torch.Tensor:
            calls.append("infer")
            return super().infer(prepared)

    r = Counting(tiny["onnx"])
    x = r.prepare(torch.randn(2, 1, 28, 28))
    lat = benchmark(r, x, 2, warmup=2, iters=3)
    assert len(calls) == 1 + 2 + 3 and lat.iters == 3 and lat.warmup == 2 and lat.noisy  # 3 < 20 timed calls
    ref = TorchRunner(tiny["ck"]).infer(torch.from_numpy(x)).numpy()
    cmp = compare_runner(r, x, ref, DEFAULT_TOLERANCES["fp32"])
    assert len(calls) == 7 and cmp.passed and cmp.parity["samples"] == 2


def test_runner_outputs_are_owned(tiny: dict[str, Path]):
    for r in (TorchRunner(tiny["ck"]), OrtRunner(tiny["onnx"])):
        a, b = torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28)
        first = r.infer(r.prepare(a))
        kept = first.clone()
        r.infer(r.prepare(b))
        assert torch.equal(first, kept), r.name


# ---------------------------------------------------------------------------------------------
# 11.4 / 11.5 bounded per-shape state
# ---------------------------------------------------------------------------------------------


def test_shape_lru_bounds_and_frees_what_it_evicts(tiny: dict[str, Path]):
    import onnxruntime as ort

    evicted: list[tuple[int, ...]] = []
    lru: ShapeLRU[tuple[int, ...], Any] = ShapeLRU(2, lambda k, _v: evicted.append(k))
    refs = {}
    for shape in [(1, 28), (2, 28), (1, 28), (3, 28)]:  # (1, 28) used again: (2, 28) is the oldest when (3, 28) arrives
        sess, created = lru.get_or_create(shape, lambda: ort.InferenceSession(str(tiny["onnx"]), providers=["CPUExecutionProvider"]))
        refs.setdefault(shape, weakref.ref(sess))
        del sess
    assert evicted == [(2, 28)] and len(lru) == 2 and lru.evictions == 1 and list(lru) == [(1, 28), (3, 28)]
    gc.collect()
    assert refs[(2, 28)]() is None and refs[(1, 28)]() is not None  # the evicted session is gone from memory
    lru.clear()
    assert evicted == [(2, 28), (1, 28), (3, 28)] and len(lru) == 0
    with pytest.raises(ValueError):
        ShapeLRU(0)


def test_trt_dtypes_unknown_is_an_error_not_float32():
    assert torch_dtype("DataType.HALF", "input", "e.engine") is torch.float16
    with pytest.raises(EngineCompatibilityError, match="'logits' has dtype FP8"):
        torch_dtype("DataType.FP8", "logits", "e.engine")


# ---------------------------------------------------------------------------------------------
# 11.6 Engine: a pool of runners, safe and parallel across threads
# ---------------------------------------------------------------------------------------------


def _mixed_images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(28, 28), (40, 56), (64, 30), (33, 33)]
    return [rng.integers(0, 255, sizes[i % len(sizes)], dtype=np.uint8) for i in range(n)]


def _threaded(eng: Engine, jobs: list[list[np.ndarray]], threads: int = 8) -> list[Any]:
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(t, len(jobs), threads):
                results[i] = [(p.index, p.score) for p in eng.predict(jobs[i], size=jobs[i][0].shape[:2])]
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    return results


def test_engine_pool_on_cpu_eight_threads_match_one(tiny: dict[str, Path]):
    imgs = _mixed_images(32)
    jobs = [[im] * (1 + i % 3) for i, im in enumerate(imgs)]  # mixed sizes and batch sizes
    with Engine.load(tiny["onnx"], provider="cpu") as single:
        expected = [[(p.index, p.score) for p in single.predict(j, size=j[0].shape[:2])] for j in jobs]
    with Engine.load(tiny["onnx"], provider="cpu", contexts=4) as eng:
        assert eng.contexts == 4 and len({id(r.sess) for r in eng.runners}) == 1  # one model in memory
        got = _threaded(eng, jobs)
    for g, e in zip(got, expected, strict=True):
        assert [i for i, _ in g] == [i for i, _ in e]
        assert np.allclose([s for _, s in g], [s for _, s in e], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 11.7 one preprocessing: Engine.predict == the training evaluation path, on non-square images
# ---------------------------------------------------------------------------------------------


@needs_fashion
def test_engine_predict_matches_training_evaluation_on_aspect_ratios(tmp_path: Path):
    from rn_deploy.train.data import DeviceLoader

    from rn_deploy.datasets.sources import load_fashion_mnist, load_image_folder

    test = load_fashion_mnist(FASHION_DIR, "test")
    root = tmp_path / "folder"
    ratios = [(28, 56), (56, 28), (30, 45), (48, 24), (28, 28)]
    files = []
    for i in range(40):
        cls = test.class_names[int(test.labels[i])].replace("/", "-")
        h, w = ratios[i % len(ratios)]
        img = Image.fromarray(test.images[i, 0].numpy()).resize((w, h), Image.BILINEAR)
        for split in ("train", "val"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            img.save(root / split / cls / f"{i:03d}.png")
        files.append(root / "val" / cls / f"{i:03d}.png")
    presize, size = 36, 28
    val = load_image_folder(root, "val", presize=presize, channels=1, cache=False, workers=0)
    torch.manual_seed(0)
    model = create_model("mnist_resnet", n_classes=len(val.class_names), in_channels=1).eval()
    cfg = ModelConfig(arch="mnist_resnet", n_classes=len(val.class_names), in_channels=1, image_size=[size, size],
                      class_names=val.class_names, mean=val.mean, std=val.std, presize=presize)
    ck = save_checkpoint(tmp_path / "m.pt", model, cfg, {})
    # The training evaluation path.
    with torch.no_grad():
        train_top1 = torch.cat([model(x).argmax(1) for x, _ in DeviceLoader(val, 16, (size, size), torch.device("cpu"), train=False)])
    # The serving path, on the files as a service would receive them (in the loader's order).
    order = sorted(files, key=lambda f: (val.class_names.index(f.parent.name), f.name))
    pix = [np.asarray(Image.open(f).convert("L")) for f in order]
    with Engine.load(export_onnx(ck, tmp_path / "m.onnx", verify=False).onnx_path, provider="cpu") as eng:
        serve_top1 = [p.index for p in eng.predict(pix)]
    assert serve_top1 == train_top1.tolist()
    # The test can tell: resizing the whole image (ignoring the aspect ratio) changes some answers.
    squashed = torch.stack([torch.nn.functional.interpolate(torch.from_numpy(p.copy())[None, None].float(), size=(size, size),
                                                            mode="bilinear", antialias=True)[0] for p in pix])
    with torch.no_grad():
        naive = model((squashed / 255 - 0.5) / 0.5).argmax(1).tolist()
    assert naive != serve_top1


# ---------------------------------------------------------------------------------------------
# 18.1 / 18.2 artifacts named are judged; reports identify what they judged
# ---------------------------------------------------------------------------------------------


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_report_identifies_artifacts_versions_counts_and_noise(tiny: dict[str, Path], tmp_path: Path):
    res = _validate_cli("--checkpoint", str(tiny["ck"]), "--onnx", str(tiny["onnx"]), "--sizes", "28,30x44", "--batch", "1,3",
                        "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    arts = {a["role"]: a for a in rep["artifacts"]}
    assert arts["checkpoint"]["sha256"] == _sha(tiny["ck"]) and arts["checkpoint"]["judged"] == "reference"
    assert arts["onnx"]["sha256"] == _sha(tiny["onnx"]) and arts["onnx"]["judged"] is True and arts["onnx"]["by"] == ["ort-cpu-fp32"]
    env = rep["environment"]
    assert env["onnxruntime"] and env["onnx"] and env["torch"] and env["rn_deploy"]
    assert rep["timing"]["warmup"] == 0 and rep["timing"]["iters"] == 2
    cells = [c for c in rep["cells"] if c["compared"]]
    assert sorted(c["images"] for c in cells) == [1, 1, 3, 3] and all(c["parity"]["samples"] == c["batch"] for c in cells)
    assert all(c["latency"]["noisy"] and "smoke figure" in c["latency"]["noise"] for c in rep["cells"])
    md = (tmp_path / "report.md").read_text()
    assert "(noisy: smoke figure: 2 timed calls" in md and "smoke figures" in md and _sha(tiny["onnx"])[:16] in md
    assert "| 3 |" in md  # images per cell


def test_noise_flag_bound():
    steady = [1.0] * MIN_TIMED_CALLS
    assert noise_flag(steady, 1.0, 1.0) is None
    assert "smoke figure" in (noise_flag(steady[:5], 1.0, 1.0) or "")
    assert "p90/p50 2.00" in (noise_flag(steady, 1.0, 2.0) or "")


@pytest.fixture(scope="module")
def rtx_engine(tiny: dict[str, Path]) -> Path:
    if not HAS_TRT_RTX:
        skip("TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)")
    eng = tiny["dir"] / "m.tensorrt-rtx.engine"
    res = CliRunner().invoke(main, ["build", str(tiny["onnx"]), "-o", str(eng), "--backend", "tensorrt-rtx", "--target", "sm89",
                                    "--fp32", "--min", "1x1x28x28", "--opt", "1x1x28x28", "--max", "2x1x64x64"])
    assert res.exit_code == 0, res.output
    return eng


def _validate_without_gpu(*args: str) -> subprocess.CompletedProcess[str]:
    """``rn-deploy validate`` in a process that sees no GPU (``CUDA_VISIBLE_DEVICES=""``), on any host: a GPU host too."""
    return subprocess.run([sys.executable, "-m", "rn_deploy", "validate", *args, "--warmup", "0", "--iters", "2"],
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=600)


@pytest.mark.trt_rtx
def test_named_engine_that_cannot_run_fails_unless_allow_skip(tiny: dict[str, Path], rtx_engine: Path, tmp_path: Path):
    args = ["--checkpoint", str(tiny["ck"]), "--onnx", str(tiny["onnx"]), "--engine", str(rtx_engine), "--sizes", "28", "--batch", "1"]
    res = _validate_without_gpu(*args, "--out", str(tmp_path / "strict"))
    assert res.returncode == 1, res.stdout + res.stderr
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"--engine {rtx_engine} was named but not judged" in err[0] and "no CUDA GPU" in err[0]
    assert "--allow-skip" in err[0]
    ok = _validate_without_gpu(*args, "--allow-skip", "--out", str(tmp_path / "lenient"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rep = json.loads((tmp_path / "lenient" / "report.json").read_text())
    arts = {a["role"]: a for a in rep["artifacts"]}
    eng = arts["engine"]
    assert eng["judged"] is False and "no CUDA GPU" in eng["reason"] and eng["sha256"] == _sha(rtx_engine)
    assert eng["targets"] == ["sm89"] and eng["library_version"] and eng["backend"] == "tensorrt-rtx"
    assert rep["allow_skip"] is True and arts["onnx"]["judged"] is True
    md = (tmp_path / "lenient" / "report.md").read_text()
    assert "targets sm89" in md and "no: trt: no CUDA GPU" in md
    # The demo's last line says which artifacts were judged and which were only built.
    from rn_deploy.validate import ValidationReport

    line = verdict_line(_report_from_json(rep, ValidationReport), [str(rtx_engine)])
    assert "judged: m.onnx (ort-cpu-fp32)" in line and "only built, not judged: m.tensorrt-rtx.engine" in line
    assert "smoke figures" in line and line.startswith("validation passed")


def _report_from_json(d: dict[str, Any], cls: Any) -> Any:
    from rn_deploy.benchmark import Latency
    from rn_deploy.validate import Cell

    cells = [Cell(**{**c, "latency": Latency(**c["latency"]) if c["latency"] else None}) for c in d["cells"]]
    keep = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "cells"}
    return cls(cells=cells, **keep)


# ---------------------------------------------------------------------------------------------
# 18.3 plots
# ---------------------------------------------------------------------------------------------


def test_plots_show_compared_cells_tolerance_and_failures(tiny: dict[str, Path], tmp_path: Path):
    ref = TorchRunner(tiny["ck"])
    runners = [TorchRunner(tiny["ck"]), OrtRunner(tiny["onnx"]), OrtRunner(tiny["dead"])]
    runners[2].name = "ort-cpu-fp32 (dead)"
    rep = validate(ref, runners, [(1, 28, 28), (2, 40, 56)], channels=1, warmup=0, iters=2)
    m = parity_matrix(rep)
    assert m is not None
    assert "torch-cpu-fp32" not in m.rows and len(m.rows) == 2  # the reference is never a row against itself
    dead_row = [i for i, r in enumerate(m.rows) if all(m.failed[i])]
    assert len(dead_row) == 1 and not any(m.failed[1 - dead_row[0]])
    compared = [v for row in m.values for v in row if v is not None]
    assert m.vmin <= np.log10(min(compared)) and m.vmax >= np.log10(max(compared)) and m.vmax >= np.log10(1e-3)
    assert m.vmax - m.vmin < 12  # the scale spans the compared cells, not 1e-12..1
    pts = latency_points(rep)
    assert {p.label for p in pts} == {"1x28x28", "2x40x56"} and all(p.p90 <= p.p99 for p in pts)
    files = write_report(rep, tmp_path)
    for f in ("parity", "latency"):
        assert Image.open(files[f]).size[0] >= 600
    assert "FAIL: constant output" in markdown(rep)


# ---------------------------------------------------------------------------------------------
# GPU: ORT CUDA stream and graphs, TensorRT runner, Engine pool (skip here with the reason)
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
def test_ort_cuda_graph_a_b_a_replays_owned_outputs_and_evicts(tiny: dict[str, Path]):
    ref = TorchRunner(tiny["ck"])
    r = ort_cuda(tiny["onnx"], cuda_graph=True, max_graphs=2)
    xs = {s: torch.randn(*s) for s in [(2, 1, 28, 28), (3, 1, 40, 56), (1, 1, 33, 29)]}
    a, b, c = xs
    outs: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for shape in (a, b, a):  # A -> B -> A, four calls each: ORT captures after its first regular runs, then replays
        for _ in range(4):
            outs.setdefault(shape, []).append(r.infer(r.prepare(xs[shape])))  # no synchronise: the runner orders its stream
    for shape, got in outs.items():
        expected = ref.infer(xs[shape]).numpy()
        assert all(parity(expected, o.cpu().numpy()).rel_l2 < 1e-3 for o in got), shape
        assert all(torch.equal(got[0], o) for o in got)  # owned: later replays did not overwrite earlier answers
    assert r.graphs.evictions == 0 and len(r.graphs) == 2
    r.infer(r.prepare(xs[c]))
    assert r.graphs.evictions == 1 and len(r.graphs) == 2 and b not in r.graphs  # B was the least recently used
    r.close()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("graph", [False, True])
def test_engine_pool_on_gpu_eight_threads_match_one(tiny: dict[str, Path], graph: bool):
    ort_cuda(tiny["onnx"])  # skip with the reason when the CUDA EP is missing
    jobs = [[im] * (1 + i % 3) for i, im in enumerate(_mixed_images(48))]
    with Engine.load(tiny["onnx"], provider="cpu") as single:
        expected = [[p.index for p in single.predict(j, size=j[0].shape[:2])] for j in jobs]
    with Engine.load(tiny["onnx"], provider="cuda", contexts=4, cuda_graph=graph) as eng:
        assert eng.contexts == 4 and len({id(r.stream) for r in eng.runners}) == 4  # type: ignore[attr-defined]
        got = _threaded(eng, jobs)
    assert [[i for i, _ in g] for g in got] == expected


@pytest.mark.gpu
@pytest.mark.tensorrt
@requires(HAS_CUDA and HAS_TRT, "needs full TensorRT and a CUDA GPU", kind="tensorrt")
def test_trt_runner_contexts_graphs_names_and_pool(tiny: dict[str, Path], tmp_path: Path):
    from rn_deploy.builder import Profile, build_engine
    from rn_deploy.runners import TrtRunner

    eng_path = tmp_path / "m.engine"
    build_engine(tiny["onnx"], eng_path, backend="tensorrt", precision="fp32",
                 profiles=[Profile((1, 1, 28, 28), (2, 1, 40, 40), (4, 1, 64, 64)), Profile((1, 1, 65, 65), (2, 1, 80, 80), (4, 1, 96, 96))])
    ref = TorchRunner(tiny["ck"])
    shapes = [(2, 1, 28, 28), (3, 1, 80, 90), (2, 1, 28, 28)]  # A (profile 0) -> B (profile 1) -> A
    for graph in (False, True):
        r = TrtRunner(eng_path, cuda_graph=graph, max_graphs=2)
        assert (r.in_name, r.out_name) == ("input", "logits") and r.in_dtype is torch.float32
        for s in shapes:
            x = torch.randn(*s)
            got = [r.infer(r.prepare(x)) for _ in range(4)]
            assert all(parity(ref.infer(x).numpy(), o.cpu().numpy()).rel_l2 < 1e-3 for o in got), (graph, s)
            assert all(torch.equal(got[0], o) for o in got)
        if graph:
            assert len(r.graphs) == 2
            r.infer(r.prepare(torch.randn(1, 1, 50, 50)))
            assert r.graphs.evictions == 1 and len(r.graphs) == 2
        else:
            assert sorted(r._contexts) == [0, 1]  # one context per profile, never switched
        r.close()
    jobs = [[im] * (1 + i % 3) for i, im in enumerate(_mixed_images(48))]
    with Engine.load(tiny["onnx"], provider="cpu") as single:
        expected = [[p.index for p in single.predict(j, size=j[0].shape[:2])] for j in jobs]
    with Engine.load(eng_path, contexts=4) as pool:
        assert len({id(r.engine) for r in pool.runners}) == 1  # type: ignore[attr-defined]
        got = _threaded(pool, jobs)
    assert [[i for i, _ in g] for g in got] == expected


def _last_layer_scaled(src: Path, dst: Path, factor: float) -> Path:
    """``src`` with the weights (and bias) of its last weighted layer multiplied by ``factor``: every logit scales by it.

    Walks back from the output through weight-free ops (Reshape, ReduceMean, ...) to the Conv/Gemm/MatMul that
    makes the logits; the graph, its names and its metadata stay as they are."""
    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    node = producer[m.graph.output[0].name]
    while node.op_type not in ("Conv", "Gemm", "MatMul"):
        node = producer[node.input[0]]
    for name in node.input[1:]:
        t = inits[name]
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * np.float32(factor), name))
    onnx.save(m, str(dst))
    return dst


def test_an_onnx_off_by_rel_l2_5e_3_fails_fp32_validation(tiny: dict[str, Path], tmp_path: Path):
    """Logits 0.5 % off the PyTorch reference (rel L2 5e-3, cosine 1, the same top-1) are not FP32 parity.

    FP32's rel_l2 bound is 1e-3; a test that only read the literal "rel_l2 <= 0.001" from a report missed the bound
    loosened 10x (issue 32). Planted (tried): DEFAULT_TOLERANCES fp32 rel_l2 1e-2 in compare.py: validate passes and
    this fails."""
    off = _last_layer_scaled(tiny["onnx"], tmp_path / "off.onnx", 1.005)
    res = _validate_cli("--checkpoint", str(tiny["ck"]), "--onnx", str(off), "--backends", "ort-cpu", "--sizes", "28,41x23",
                        "--batch", "1,4", "--out", str(tmp_path))
    rep = json.loads((tmp_path / "report.json").read_text())
    cells = [c for c in rep["cells"] if c["compared"]]
    assert len(cells) == 4 and all(4.9e-3 < c["parity"]["rel_l2"] < 5.1e-3 for c in cells), [c["parity"] for c in cells]
    assert all(c["parity"]["top1"] == 1.0 for c in cells)  # only the size of the logits is off
    assert res.exit_code == 1 and rep["passed"] is False, res.output
    assert all(not c["passed"] and any(f.startswith("rel_l2 5.0") for f in c["failures"]) for c in cells), cells
    same = _validate_cli("--checkpoint", str(tiny["ck"]), "--onnx", str(tiny["onnx"]), "--backends", "ort-cpu", "--sizes", "28",
                         "--batch", "1", "--out", str(tmp_path / "same"))
    assert same.exit_code == 0, same.output  # the untouched export passes the same check

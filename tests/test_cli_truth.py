"""A CLI that never misleads: strict JSON, exit codes and signals, one voice under torchrun, small truths.

Real commands on a real (tiny) training run: mnist_cnn on 128 Fashion-MNIST images, CPU.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rn_deploy.cli import echo_json, main
from rn_deploy.strictjson import loads_strict

from .conftest import FASHION_DIR, HAS_TRT_RTX, make_checkpoint, needs_fashion, needs_rtx, skip

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--arch", "mnist_cnn", "--limit", "128", "--batch-size", "64", "--device", "cpu", "--data", str(FASHION_DIR)]


def cli(args: list[str]) -> Any:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """One finished 1-epoch training run (text mode): its folder and the CLI result."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        skip(f"Fashion-MNIST not found in {FASHION_DIR}")
    out = tmp_path_factory.mktemp("run") / "m"
    res = cli(["train", *TINY, "--epochs", "1", "--quiet", "--out", out])
    assert res.exit_code == 0, res.output + res.stderr
    return out, res


# ---- strict JSON ----

def test_echo_json_writes_null_for_non_finite_numbers(capsys: pytest.CaptureFixture[str]):
    echo_json({"accuracy": float("nan"), "p99": [float("inf"), -float("inf"), 1.5], "name": Path("a/b")})
    assert loads_strict(capsys.readouterr().out) == {"accuracy": None, "p99": [None, None, 1.5], "name": "a/b"}


def _json_of(args: list[str]) -> Any:
    res = cli(args)
    assert res.exit_code == 0, res.output + res.stderr
    return loads_strict(res.stdout)  # stdout holds the JSON and nothing else


@needs_fashion
def test_every_json_output_is_strict_json(run: tuple[Path, Any], tmp_path: Path):
    out, _ = run
    ckpt = out / "model.pt"
    assert isinstance(_json_of(["models", "--n-classes", "10", "--json"]), list)
    assert _json_of(["summary", "mnist_cnn", "--size", "28", "--json"])
    onnx_path = tmp_path / "m.onnx"
    assert _json_of(["export", ckpt, "-o", onnx_path, "--json"])["onnx_path"] == str(onnx_path)
    rep = _json_of(["validate", "--checkpoint", ckpt, "--onnx", onnx_path, "--backends", "torch,ort-cpu", "--sizes", "28",
                    "--batch", "1", "--warmup", "0", "--iters", "1", "--out", tmp_path / "rep", "--json"])
    assert rep["passed"] is True
    assert _json_of(["lr-find", *TINY, "--batch-size", "32", "--iters", "5", "--out", tmp_path / "lrf", "--json"])["lrs"]
    shown = _json_of(["show-batch", "--data", str(FASHION_DIR), "--limit", "32", "--n", "4", "-o", tmp_path / "b.png", "--json"])
    assert shown == {"png": str(tmp_path / "b.png"), "rows": 2, "cols": 2, "size": 28}
    if HAS_TRT_RTX:
        eng = tmp_path / "m.engine"
        _json_of(["build", onnx_path, "-o", eng, "--backend", "tensorrt-rtx", "--target", "sm89", "--fp32", "--min", "1x1x28x28",
                  "--opt", "1x1x28x28", "--max", "2x1x56x56", "--json"])
        assert _json_of(["inspect", eng, "--json"])["manifest"]["backend"] == "tensorrt-rtx"


def test_every_command_has_json():
    lacking = [name for name, cmd in main.commands.items() if "as_json" not in {p.name for p in cmd.params}]
    assert lacking == []


@needs_fashion
def test_resume_of_a_finished_run_has_nothing_to_do(run: tuple[Path, Any]):
    out, first = run
    assert re.search(r"accuracy \d\.\d{4} after 1 epoch \(", first.stdout), first.stdout  # "1 epoch", not "1 epochs"
    again = cli(["train", *TINY, "--epochs", "1", "--quiet", "--out", out, "--resume"])
    assert again.exit_code == 0 and again.stdout.strip() == f"{out / 'model.pt'}: already trained 1/1 epochs; nothing to do"
    js = _json_of(["train", *TINY, "--epochs", "1", "--out", out, "--resume", "--json"])
    from rn_deploy.checkpoint import read_checkpoint

    saved = read_checkpoint(out / "model.pt")["train"]
    assert js["nothing_to_do"] is True and js["epochs"] == 1
    assert js["accuracy"] == pytest.approx(saved["accuracy"]) and not math.isnan(js["accuracy"])


# ---- exit codes ----

USAGE_ERRORS = [
    (["build", "m.onnx", "--min", "axb", "--opt", "1x1x28x28", "--max", "1x1x28x28"], "--min"),
    (["build", "m.onnx", "--min", "1x1x28", "--opt", "1x1x28x28", "--max", "1x1x28x28"], "--min"),
    (["build", "m.onnx", "--min", "1x1x28x28", "--opt", "1x1x28x28", "--max", "1x1x28xq"], "--max"),
    (["build", "m.onnx", "--profile", "1x1x28x28"], "--profile"),
    (["build", "m.onnx", "--sizes-from", "s.txt", "--batch", "1,8"], "--batch"),
    (["validate", "--checkpoint", "m.pt", "--backends", "trt,nope"], "--backends"),
    (["validate", "--checkpoint", "m.pt", "--tol", "rel_l2=abc"], "--tol"),
    (["validate", "--checkpoint", "m.pt", "--sizes", "1x2x3"], "--sizes"),
    (["train", "--size", "64:4,abc", *TINY, "--out", "{tmp}"], "--size"),
    (["train", "--size", "4", *TINY, "--out", "{tmp}"], "--size"),
    (["train", "--size", "16:1,24:1", "--epochs", "3", *TINY, "--out", "{tmp}"], "--epochs"),
    (["show-batch", "--arch", "resnet18", "--limit", "8", "--n", "1", "-o", "{tmp}/b.png"], "--arch"),  # it did nothing there
]


@pytest.mark.parametrize("args,option", USAGE_ERRORS, ids=[" ".join(a[:4]) for a, _ in USAGE_ERRORS])
def test_malformed_values_are_usage_errors(args: list[str], option: str, tmp_path: Path):
    res = cli([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    assert option in res.stderr and "Traceback" not in res.stderr


@needs_fashion
def test_ctrl_c_during_training_exits_130_and_says_how_to_resume(tmp_path: Path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rn_deploy", "train", *TINY, "--epochs", "500", "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    seen, deadline = [], time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen.append(line)
            if line.startswith("epoch 2/500") or not line:
                break
        assert any(s.startswith("epoch 2/500") for s in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)
        stdout, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and stdout == ""
    m = re.search(r"interrupted: (\S+) holds (\d+) epochs of 500; run the same command with --resume to continue from it", err)
    assert m, err[-2000:]
    from rn_deploy.checkpoint import read_checkpoint

    assert m[1] == str(out / "model.pt") and read_checkpoint(out / "model.pt")["train"]["epochs"] == int(m[2]) >= 2


# ---- one voice under torchrun ----

@needs_fashion
def test_only_rank_0_speaks_under_torchrun(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "rn_deploy",
                           "train", *TINY, "--batch-size", "32", "--epochs", "1", "--out", str(tmp_path / "ddp"), "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = loads_strict(proc.stdout)  # one JSON document, not one per rank
    assert res["world_size"] == 2 and res["epochs"] == 1
    assert len(re.findall(r"^epoch 1/1", proc.stderr, flags=re.M)) == 1, proc.stderr[-3000:]
    assert len(re.findall(r"^data: ", proc.stderr, flags=re.M)) == 1, proc.stderr[-3000:]


# ---- small truths ----

def _all_commands() -> list[tuple[str, click.Command]]:
    return sorted(main.commands.items())


def test_every_option_has_help():
    missing = [f"{name} {'/'.join(p.opts)}" for name, cmd in _all_commands() for p in cmd.params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert missing == []


def test_show_batch_offers_only_options_it_uses():
    opts = {o for p in main.commands["show-batch"].params for o in p.opts}
    assert not opts & {"--arch", "--batch-size", "--device"}
    for name in ("train", "lr-find"):
        assert {"--arch", "--batch-size", "--device"} <= {o for p in main.commands[name].params for o in p.opts}


def test_readme_lists_every_validate_backend():
    from rn_deploy.validate import BACKEND_NAMES

    readme = (ROOT / "README.md").read_text()
    assert [b for b in BACKEND_NAMES if not re.search(rf"(?<![\w-]){re.escape(b)}(?![\w-])", readme)] == []


def test_prediction_probs_hold_every_class(tmp_path: Path):
    from rn_deploy import Engine
    from rn_deploy.export import export_onnx

    ckpt = make_checkpoint(tmp_path / "m.pt", arch="mnist_cnn", n_classes=10, in_channels=1, size=28)
    onnx_path = Path(export_onnx(ckpt, tmp_path / "m.onnx", verify=False).onnx_path)
    imgs = [np.random.default_rng(i).integers(0, 255, (28, 28), dtype=np.uint8) for i in range(2)]
    with Engine.load(onnx_path) as eng:
        for p in eng.predict(imgs):
            assert len(p.probs) == 10 and sum(p.probs.values()) == pytest.approx(1.0, abs=1e-5)
            assert list(p.probs)[0] == p.label and list(p.probs.values()) == sorted(p.probs.values(), reverse=True)
        assert all(len(p.probs) == 3 for p in eng.predict(imgs, top_k=3))  # the documented way to keep fewer


@needs_fashion
def test_progressive_resizing_logs_each_epochs_size(tmp_path: Path):
    res = cli(["train", *TINY, "--size", "16:1,24:1", "--quiet", "--out", tmp_path / "prog"])
    assert res.exit_code == 0, res.stderr
    assert re.search(r"^epoch 1/2 at 16px: ", res.stderr, flags=re.M) and re.search(r"^epoch 2/2 at 24px: ", res.stderr, flags=re.M)
    assert "after 2 epochs" in res.stdout


def test_validate_images_says_it_converts_colour_and_report_prints_values(tmp_path: Path):
    ckpt = make_checkpoint(tmp_path / "m.pt", arch="mnist_cnn", n_classes=10, in_channels=1, size=28)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28, 3), 40 * i, np.uint8)).save(folder / f"c{i}.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "g.png")
    from rn_deploy.export import export_onnx

    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx", verify=False).onnx_path
    res = cli(["validate", "--checkpoint", ckpt, "--onnx", onnx_path, "--backends", "ort-cpu", "--images", folder, "--sizes", "28",
               "--batch", "1", "--warmup", "0", "--iters", "1", "--out", tmp_path / "rep"])
    assert res.exit_code == 0, res.stderr
    assert "--images: converted 3 of 4 images (3 RGB) to grayscale (L): the model takes 1 channel(s)" in res.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    tol = next(ln for ln in md.splitlines() if ln.startswith("Tolerances:"))
    assert "{" not in tol and "None" not in tol and "rel_l2 ≤ 0.001" in tol, tol


@needs_rtx
def test_inspect_prints_values_not_reprs(tmp_path: Path):
    from rn_deploy.builder import Profile, build_engine
    from rn_deploy.export import export_onnx

    ckpt = make_checkpoint(tmp_path / "m.pt", arch="mnist_cnn", n_classes=10, in_channels=1, size=28)
    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx", verify=False).onnx_path
    build_engine(onnx_path, tmp_path / "m.engine", backend="tensorrt-rtx", precision="fp32",
                 profiles=[Profile((1, 1, 28, 28), (2, 1, 28, 28), (4, 1, 56, 56))], targets=["sm86", "sm89"])
    res = cli(["inspect", tmp_path / "m.engine"])
    assert res.exit_code == 0, res.stderr
    head = res.stdout.split("layers:")[0]
    assert not re.search(r"\[|\]|None|'", head), head
    assert re.search(r"targets: sm86, sm89$", head, flags=re.M) and "min 1x1x28x28 opt 2x1x28x28 max 4x1x56x56" in head
    assert re.search(r"tensor: input float \?x1x\?x\?$", head, flags=re.M)

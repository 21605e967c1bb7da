"""lr-find, summary, show-batch and progressive resizing (issue: seed ergonomics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rn_deploy.train import TrainConfig, fit
from rn_deploy.train.data import DeviceLoader
from rn_deploy.train.loop import parse_size_schedule
from rn_deploy.train.lr_find import lr_find, suggest
from rn_deploy.train.show import CELL_PX, show_batch

from rn_deploy.checkpoint import load_checkpoint
from rn_deploy.cli import main
from rn_deploy.datasets.sources import load_fashion_mnist
from rn_deploy.export import export_onnx
from rn_deploy.models import count_parameters, create_model, get_model_spec, list_models
from rn_deploy.summary import summarize

from .conftest import FASHION_DIR, needs_fashion


@pytest.mark.parametrize("name", list_models())
def test_summary_totals_equal_the_real_parameter_count(name: str):
    spec = get_model_spec(name)
    model = create_model(name, n_classes=7, in_channels=spec.default_in_channels)
    s = summarize(model, (1, spec.default_in_channels, 64, 48))
    assert s.total_params == count_parameters(model) == sum(r.params for r in s.rows)
    assert s.macs > 0 and any(r.type == "Conv2d" for r in s.rows)
    assert s.rows[-1].output_shape == [1, 7] or s.rows[-1].type in ("Flatten", "Linear", "AdaptiveAvgPool2d")


def test_summary_macs_of_a_known_layer():
    s = summarize(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8 * 16, 2)), (1, 3, 4, 4))
    assert s.macs == 8 * 4 * 4 * 3 * 9 + 2 * 128
    res = CliRunner().invoke(main, ["summary", "mnist_cnn", "--size", "28", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["total_params"] == count_parameters(
        create_model("mnist_cnn", n_classes=1000, in_channels=1))


def test_lr_find_suggestion_on_a_known_curve():
    """Steepest descent before the minimum: the LR where a tanh step in log-LR falls fastest."""
    lrs = [float(v) for v in np.logspace(-6, 1, 71)]  # 10 points per decade
    x = np.log10(lrs)
    losses = 2.0 - np.tanh(2 * (x + 3))  # falls fastest at lr = 1e-3
    losses = np.where(x > -1, losses + 3 * (x + 1) ** 2, losses)  # diverges past lr = 0.1, minimum there
    i_min = int(np.argmin(losses))
    spike = losses.copy()
    spike[i_min + 5:i_min + 8] = [9.0, 6.0, 3.5]  # a steeper fall after the minimum must be ignored
    noisy_start = losses.copy()
    noisy_start[:5] = [2.9, 2.8, 2.5, 2.9, 3.0]  # the first smoothed points average a few batches: noise
    for curve in (losses, spike, noisy_start):
        assert suggest(lrs, [float(v) for v in curve]) == pytest.approx(1e-3, rel=1e-9)
    flat_then_up = [1.0] * 3 + [1.0 + k for k in range(10)]  # the minimum is at the start: suggest it
    assert suggest(lrs[:13], flat_then_up) == lrs[0]


@needs_fashion
def test_lr_find_on_real_data_restores_state_and_suggests_a_descending_lr(tmp_path: Path):
    ds = load_fashion_mnist(FASHION_DIR, "train").subset(512)
    torch.manual_seed(0)
    model = create_model("mnist_cnn", n_classes=10, in_channels=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = lr_find(model, opt, DeviceLoader(ds, 32, (28, 28), torch.device("cpu"), train=True), start=1e-6, end=10, iters=40)
    assert all(np.isfinite(res.losses)) and len(res.lrs) == len(res.losses) >= 10
    assert min(res.losses) < 0.9 * res.losses[0]  # the model learned on the way
    i, i_min = res.lrs.index(res.suggestion), res.lrs.index(res.min_loss_lr)
    assert i_min == int(np.argmin(res.losses))
    assert 0 < i < i_min, (i, i_min)  # before the minimum, not the start
    assert res.losses[i + 1] < res.losses[i - 1]  # the (smoothed) loss is falling there
    assert res.suggestion > 1e-4, res.suggestion  # not the noise of the first batches (this model trains at ~1e-3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert opt.param_groups[0]["lr"] == 1e-3 and not opt.state  # optimiser restored too
    out = tmp_path / "lrf"
    cli = CliRunner().invoke(main, ["lr-find", "--arch", "mnist_cnn", "--limit", "512", "--batch-size", "32", "--iters", "30",
                                    "--device", "cpu", "--out", str(out), "--json", "--data", str(FASHION_DIR)])
    assert cli.exit_code == 0, cli.output
    d = json.loads(cli.stdout)
    assert len(d["lrs"]) == len(d["losses"]) >= 10 and d["lrs"][0] == pytest.approx(1e-7)
    assert d["suggestion"] == suggest(d["lrs"], d["losses"]) and d["suggestion"] < d["min_loss_lr"]
    assert Path(d["plot"]).stat().st_size > 5000


@needs_fashion
def test_show_batch_writes_the_right_grid(tmp_path: Path):
    ds = load_fashion_mnist(FASHION_DIR, "train").subset(64)
    rows, cols = show_batch(ds, tmp_path / "b.png", n=6, size=28)
    assert (rows, cols) == (2, 3)
    assert Image.open(tmp_path / "b.png").size == (3 * CELL_PX, 2 * CELL_PX)
    res = CliRunner().invoke(main, ["show-batch", "--n", "4", "-o", str(tmp_path / "c.png"), "--data", str(FASHION_DIR), "--limit", "32"])
    assert res.exit_code == 0 and Image.open(tmp_path / "c.png").size == (2 * CELL_PX, 2 * CELL_PX)


def test_size_schedule_parsing():
    assert parse_size_schedule("28") == (28, None)
    assert parse_size_schedule("64:4,128:4,224:2") == (224, [(64, 4), (128, 4), (224, 2)])
    cfg = TrainConfig(schedule=[(64, 4), (128, 2)])
    assert cfg.epochs == 6 and cfg.size == 128 and cfg.epoch_sizes() == [64] * 4 + [128] * 2
    with pytest.raises(Exception, match="SIZE:EPOCHS"):
        parse_size_schedule("64:a")


@needs_fashion
def test_two_phase_progressive_run_trains_and_exports(tmp_path: Path):
    cfg = TrainConfig(arch="mnist_resnet", dataset="fashion-mnist", data=str(FASHION_DIR), batch_size=64, lr=5e-3, device="cpu",
                      out=str(tmp_path), limit=2048, schedule=[(28, 1), (40, 1)])
    res = fit(cfg, progress=False)
    assert [h["size"] for h in res.history] == [28, 40] and res.accuracy > 0.3
    ck = load_checkpoint(res.checkpoint)
    assert ck.config.image_size == [40, 40]
    assert export_onnx(res.checkpoint, tmp_path / "m.onnx").passed

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rn_deploy.train import TrainConfig, fit
from rn_deploy.train.data import augment_batch

from rn_deploy.checkpoint import load_checkpoint
from rn_deploy.datasets.sources import Augment, load_dataset, load_fashion_mnist, load_image_folder
from rn_deploy.errors import DataError, RnDeployError

from .conftest import FASHION_DIR, needs_fashion, write_imagefolder
from .ddp_rank_state import digest

ROOT = Path(__file__).resolve().parent.parent


@needs_fashion
def test_fashion_mnist_reads_real_idx():
    tr = load_fashion_mnist(FASHION_DIR, "train")
    te = load_fashion_mnist(FASHION_DIR, "test")
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert tr.images.dtype == torch.uint8 and sorted(tr.labels.unique().tolist()) == list(range(10))
    assert tr.class_names[9] == "Ankle boot"


@needs_fashion
def test_one_epoch_on_2000_fashion_images_beats_60_percent(tmp_path: Path):
    cfg = TrainConfig(arch="resnet18", dataset="fashion-mnist", data=str(FASHION_DIR), epochs=1, batch_size=64, lr=3e-3,
                      size=28, device="cpu", out=str(tmp_path / "run"), limit=2000)
    res = fit(cfg, progress=False)
    assert res.n_train == 2000 and res.accuracy > 0.60, res
    ck = load_checkpoint(res.checkpoint)
    assert ck.config.class_names[0] == "T-shirt/top" and ck.config.image_size == [28, 28] and ck.config.in_channels == 1
    assert ck.train["accuracy"] == pytest.approx(res.accuracy) and 0 < ck.config.mean[0] < 1


def test_imagefolder_layout_trains_and_checkpoint_loads(tmp_path: Path):
    root = tmp_path / "imagenette"
    write_imagefolder(root, {"n01440764": (220, 40, 40), "n02102040": (40, 200, 40), "n02979186": (40, 40, 220)}, 24)
    (root / "train" / "n01440764" / "broken.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = load_image_folder(root, "train", presize=40, max_bad=0.05)
    assert ds.images.shape == (72, 3, 40, 40) and ds.skipped == 1
    assert (root / ".rn-deploy-cache").is_dir()  # decoded once, cached
    cfg = TrainConfig(arch="fcn", dataset="imagefolder", data=str(root), epochs=3, batch_size=16, lr=1e-2, size=32, presize=40,
                      device="cpu", out=str(tmp_path / "run"), workers=0)
    with pytest.warns(UserWarning):
        res = fit(cfg, progress=False)
    assert res.accuracy >= 0.8, res.history
    ck = load_checkpoint(res.checkpoint)
    assert ck.config.class_names == ["n01440764", "n02102040", "n02979186"] and ck.config.in_channels == 3


def _file_backed(t: torch.Tensor) -> str | None:
    """The file whose memory mapping holds ``t``'s data (Linux /proc/self/maps), or None."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= ptr < hi:
            return parts[5] if len(parts) == 6 and parts[5].startswith("/") else None
    return None


def test_imagefolder_cache_is_memory_mapped_and_equals_a_fresh_decode(tmp_path: Path):
    """Splits larger than memory: the decoded cache is read page by page, not loaded whole."""
    root = tmp_path / "d"
    write_imagefolder(root, {"a": (200, 0, 0), "b": (0, 200, 0)}, 6)
    fresh = load_image_folder(root, "val", presize=24, cache=False, workers=0)
    assert not _file_backed(fresh.images)
    first = load_image_folder(root, "val", presize=24, workers=0)  # decodes into the cache file
    again = load_image_folder(root, "val", presize=24, workers=0)  # reads it back
    cache = sorted((root / ".rn-deploy-cache").iterdir())
    assert str(_file_backed(first.images)).endswith(".npy") and _file_backed(again.images) == _file_backed(first.images)
    assert torch.equal(fresh.images, again.images) and torch.equal(fresh.labels, again.labels)
    assert [p.suffix for p in cache] == [".npy", ".npy"]  # images + ok-mask, no temp file left


def test_imagefolder_errors(tmp_path: Path):
    root = tmp_path / "d"
    write_imagefolder(root, {"a": (200, 0, 0), "b": (0, 200, 0)}, 4)
    (root / "val" / "c").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "val" / "c" / "x.png")
    with pytest.raises(DataError, match=r"class folders differ.*only here: \['c'\]"):
        load_dataset("imagefolder", root)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder has no images"):
        load_dataset("imagefolder", root)
    with pytest.raises(DataError, match="no such folder"):
        load_dataset("imagefolder", tmp_path / "missing")
    bad = tmp_path / "bad"
    write_imagefolder(bad, {"a": (200, 0, 0)}, 4)
    for f in (bad / "train" / "a").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(DataError, match="4 of 4 images are unreadable"), pytest.warns(UserWarning):
        load_image_folder(bad, "train", presize=16, cache=False, workers=0)


@needs_fashion
def test_mnist_png_tree_from_real_images(tmp_path: Path):
    fm = load_fashion_mnist(FASHION_DIR, "test")
    root = tmp_path / "mnist"
    for split, offset in (("training", 0), ("testing", 5000)):
        for k in range(400):
            i = offset + k
            d = root / split / str(int(fm.labels[i]))
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(fm.images[i, 0].numpy()).save(d / f"{i}.png")
    cfg = TrainConfig(arch="mnist_resnet", dataset="mnist-png", data=str(root), epochs=2, batch_size=32, lr=1e-2, size=28,
                      device="cpu", out=str(tmp_path / "run"), workers=0)
    res = fit(cfg, progress=False)
    assert res.n_train == 400 and res.accuracy > 0.3  # 10 classes from 400 images: well above chance (0.1)
    ck = load_checkpoint(res.checkpoint)
    assert ck.config.arch == "mnist_resnet" and ck.config.in_channels == 1 and len(ck.config.class_names) == 10


@needs_fashion
def test_resume_continues_to_the_same_weights(tmp_path: Path):
    base = dict(arch="mnist_cnn", dataset="fashion-mnist", data=str(FASHION_DIR), epochs=2, batch_size=64, lr=5e-3, size=28,
                device="cpu", limit=512)
    full = fit(TrainConfig(**base, out=str(tmp_path / "full")), progress=False)

    class Stop(Exception):
        pass

    def stop_after_first(msg: str) -> None:
        if msg.startswith("epoch 1/2"):
            raise Stop

    with pytest.raises(Stop):
        fit(TrainConfig(**base, out=str(tmp_path / "part")), log=stop_after_first, progress=False)
    assert load_checkpoint(tmp_path / "part" / "model.pt").train["epochs"] == 1
    resumed = fit(TrainConfig(**base, out=str(tmp_path / "part"), resume=True), progress=False)
    a = load_checkpoint(full.checkpoint).model.state_dict()
    b = load_checkpoint(resumed.checkpoint).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert len(resumed.history) == 2
    with pytest.raises(RnDeployError, match="cannot resume with lr"):
        fit(TrainConfig(**{**base, "lr": 1e-3}, out=str(tmp_path / "part"), resume=True), progress=False)


def test_augment_pad_is_whole_pixel_shift():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8) + 1
    out = augment_batch(x, (8, 8), Augment(pad=2), torch.Generator().manual_seed(3))
    for b in range(2):
        vals = set(out[b].flatten().tolist()) - {0.0}
        assert vals <= set(x[b].flatten().tolist())  # nearest, integer shift: no new values
    rrc = augment_batch(x.repeat(1, 3, 2, 2), (6, 5), Augment(min_scale=0.5, flip=True))
    assert rrc.shape == (2, 3, 6, 5)


@needs_fashion
def test_cli_python_m_train_json_and_errors(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "rn_deploy.train", "--arch", "mnist_cnn", "--limit", "256", "--epochs", "1", "--batch-size", "64",
                          "--device", "cpu", "--out", str(tmp_path / "m"), "--json", "--data", str(FASHION_DIR)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["epochs"] == 1 and Path(d["checkpoint"]).exists()
    bad = subprocess.run([sys.executable, "-m", "rn_deploy.train", "--arch", "resnet9", "--device", "cpu"], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "unknown architecture 'resnet9'" in bad.stderr


def _torchrun_train(module: str, limit: int, tmp_path: Path, **env_extra: str) -> list[dict]:
    """2 gloo processes of `python -m MODULE` (the training CLI), mnist_cnn, batch 32: rank 0's JSON result(s)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env_extra}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", module,
                           "--arch", "mnist_cnn", "--limit", str(limit), "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                           "--out", str(tmp_path / "ddp"), "--json", "--quiet", "--data", str(FASHION_DIR)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(chunk) for chunk in proc.stdout.replace("}\n{", "}\n\x00{").split("\x00") if chunk.strip()]
    assert len(results) == 1 and results[0]["world_size"] == 2  # one voice: rank 0 alone prints
    return results


@needs_fashion
def test_ddp_two_cpu_processes_gloo(tmp_path: Path):
    # tests.ddp_rank_state runs `python -m rn_deploy.train` and then writes each rank's own state (see there)
    _torchrun_train("tests.ddp_rank_state", 512, tmp_path, RN_TEST_RANK_STATE=str(tmp_path))
    # All-reduced metrics agree whatever the ranks did; each rank's own weights are the real check.
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["data"] != ranks[1]["data"], "both ranks trained on the same batches"
    assert ranks[0]["params"] == ranks[1]["params"], "the ranks' weights differ: gradients were not all-reduced"
    assert ranks[0]["buffers"] == ranks[1]["buffers"], "the ranks' BatchNorm statistics differ"
    ck = load_checkpoint(tmp_path / "ddp" / "model.pt")
    assert ck.train["epochs"] == 1
    assert digest(ck.model.named_parameters()) == ranks[0]["params"], "the checkpoint is not the trained weights"


def test_device_loader_shards_uneven_data_evenly_for_training_and_completely_for_evaluation():
    from rn_deploy.train.data import DeviceLoader

    from rn_deploy.datasets.sources import ImageSet

    n = 300  # 9 training batches of 32 (uneven over 2 ranks), 5 validation batches of 64
    ds = ImageSet(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous(), torch.arange(n),
                  ["a", "b"], [0.0], [1.0])
    tr = [DeviceLoader(ds, 32, (4, 4), torch.device("cpu"), train=True, rank=r, world=2) for r in (0, 1)]
    assert [len(dl) for dl in tr] == [4, 4] and [sum(1 for _ in dl) for dl in tr] == [4, 4]
    va = [DeviceLoader(ds, 64, (4, 4), torch.device("cpu"), train=False, rank=r, world=2) for r in (0, 1)]
    seen = [int(v) for dl in va for _x, y in dl for v in y]
    assert sorted(seen) == list(range(n))  # every validation image once: none twice, none dropped


@needs_fashion
def test_ddp_uneven_batches_same_steps_and_whole_validation_set(tmp_path: Path):
    """300 images, batch 32: 9 training batches (5/4 before the fix: gloo collective mismatch) and 5 validation batches."""
    from rn_deploy.train.data import DeviceLoader
    from rn_deploy.train.loop import evaluate

    results = _torchrun_train("rn_deploy.train", 300, tmp_path)
    assert results[0]["history"][0]["val_images"] == 300
    # The reported accuracy is the saved model's accuracy over the whole validation subset, evaluated in one process.
    ck = load_checkpoint(tmp_path / "ddp" / "model.pt")
    val = load_fashion_mnist(FASHION_DIR, "test").subset(300, 0)
    alone = evaluate(ck.model, DeviceLoader(val, 64, (28, 28), torch.device("cpu"), train=False), None)
    assert alone["val_images"] == 300
    assert abs(alone["accuracy"] - results[0]["accuracy"]) < 1e-9 and abs(alone["val_loss"] - results[0]["val_loss"]) < 1e-4


@needs_fashion
def test_every_progress_and_summary_line_of_training_reads_as_written(tmp_path: Path):
    """Issue 24 item 9: the epoch line printed ``train_loss {train_loss:.4f}`` literally (a missing ``f``).

    Every line a user reads in a run (data, epoch, resume, the final summary, nothing-to-do) is compared whole
    with the numbers saved in the checkpoint's history, formatted here; no line keeps a ``{`` placeholder.
    Planted: dropping the ``f`` again fails the epoch-line assertions.
    """
    import re

    from click.testing import CliRunner

    from rn_deploy.cli import main

    out = tmp_path / "run"
    args = ["--arch", "mnist_cnn", "--dataset", "fashion-mnist", "--data", str(FASHION_DIR), "--limit", "128", "--epochs", "2",
            "--batch-size", "64", "--size", "28", "--device", "cpu", "--out", str(out), "--quiet"]
    lines: list[str] = []

    class Stop(Exception):
        pass

    def log(msg: str) -> None:
        lines.append(msg)
        if msg.startswith("epoch 1/2"):
            raise Stop

    with pytest.raises(Stop):
        fit(TrainConfig(arch="mnist_cnn", dataset="fashion-mnist", data=str(FASHION_DIR), limit=128, epochs=2, batch_size=64,
                        size=28, device="cpu", out=str(out)), log=log, progress=False)

    def epoch_line(n: int, h: dict) -> str:
        return (f"epoch {n}/2: train_loss {h['train_loss']:.4f} val_loss {h['val_loss']:.4f} accuracy {h['accuracy']:.4f} "
                f"top5 {h['top5']:.4f} (")

    h1 = load_checkpoint(out / "model.pt").train["history"][0]
    assert lines[0] == "data: fashion-mnist 128 train / 128 val images, 10 classes, device cpu"
    assert lines[1].startswith(epoch_line(1, h1)) and re.fullmatch(r".*\(\d[\d,]* img/s\)", lines[1]), lines[1]

    r = CliRunner().invoke(main, ["train", *args, "--resume"])
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(out / "model.pt").train
    err = r.stderr.splitlines()
    assert err[0] == lines[0]
    assert err[1] == f"resume: {out / 'model.pt'} after 1 epoch"
    assert err[2].startswith(epoch_line(2, ck["history"][1])) and re.fullmatch(r".*\(\d[\d,]* img/s\)", err[2]), err[2]
    assert re.fullmatch(rf"wrote {re.escape(str(out / 'model.pt'))}: accuracy {ck['accuracy']:.4f} after 2 epochs \(\d+\.\ds\)\n",
                        r.stdout), r.stdout
    again = CliRunner().invoke(main, ["train", *args, "--resume"])
    assert again.exit_code == 0 and again.stdout == f"{out / 'model.pt'}: already trained 2/2 epochs; nothing to do\n"
    for text in [*lines, *err, r.stdout, again.stdout, again.stderr]:
        assert "{" not in text and "}" not in text, text

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from rn_deploy.checkpoint import FORMAT, ModelConfig, import_state_dict, load_checkpoint, save_checkpoint
from rn_deploy.errors import CheckpointError, RnDeployError
from rn_deploy.models import create_model, get_model_spec, list_models

from .conftest import make_model


@pytest.mark.parametrize("name", list_models())
def test_round_trip_gives_identical_outputs(tmp_path: Path, name: str):
    """The reference is the model in memory, never anything read back from the file under test."""
    ch = get_model_spec(name).default_in_channels
    model, cfg = make_model(name, n_classes=4, in_channels=ch)
    model.eval()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, {"note": "round trip"})
    ck = load_checkpoint(path)
    x = torch.randn(2, ch, 45, 61)
    with torch.no_grad():
        assert torch.equal(ck.model(x), model(x))
    got = ck.model.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert ck.config == cfg and ck.train["note"] == "round trip"
    assert not ck.model.training, "loaded for inference"
    assert torch.load(path, weights_only=True)["format"] == FORMAT
    assert not list(tmp_path.glob(".*.tmp")), "temp file left behind"


def test_config_defaults_and_validation():
    cfg = ModelConfig(arch="mnist_cnn", n_classes=3, in_channels=1, image_size=28)
    assert cfg.class_names == ["0", "1", "2"] and cfg.image_size == [28, 28] and len(cfg.mean) == 1
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="class names"):
        ModelConfig(arch="resnet18", n_classes=3, class_names=["a"])


def test_missing_file(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_and_random_bytes(tmp_path: Path, tiny_ckpt: Path):
    data = tiny_ckpt.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(trunc)
    rnd = tmp_path / "random.pt"
    rnd.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="random.pt"):
        load_checkpoint(rnd)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_foreign_pickle_is_refused_and_nothing_runs(tmp_path: Path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "config": {}, "state_dict": _Evil(str(marker))}, evil)
    raw_pickle = tmp_path / "evil.pkl"
    raw_pickle.write_bytes(pickle.dumps(_Evil(str(marker))))
    for f in (evil, raw_pickle):
        with pytest.raises(CheckpointError, match=f"{f.name}: (refused|not a readable)"):
            load_checkpoint(f)
    assert not marker.exists(), "the pickle's payload was executed"


def test_not_an_rn_deploy_checkpoint(tmp_path: Path):
    bare = tmp_path / "bare.pt"
    torch.save(create_model("mnist_cnn", n_classes=10, in_channels=1).state_dict(), bare)
    with pytest.raises(CheckpointError, match="not an rn-deploy checkpoint"):
        load_checkpoint(bare)


def test_unknown_arch_and_state_dict_mismatch(tmp_path: Path, tiny_ckpt: Path):
    raw = torch.load(tiny_ckpt, weights_only=True)
    raw["config"]["arch"] = "resnet9000"
    torch.save(raw, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet9000'"):
        load_checkpoint(tmp_path / "arch.pt")
    raw["config"]["arch"] = "resnet34"  # resnet18 weights under a resnet34 config
    torch.save(raw, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="weights do not match arch 'resnet34'.*missing"):
        load_checkpoint(tmp_path / "other.pt")
    raw["config"]["arch"] = "resnet18"
    raw["config"]["n_classes"] = 9
    raw["config"]["class_names"] = []
    torch.save(raw, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(tmp_path / "shape.pt")


def test_import_torchvision_state_dict(tmp_path: Path):
    tv = create_model("tv_resnet18", n_classes=6)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    out = import_state_dict(tmp_path / "tv.pth", tmp_path / "model.pt", ModelConfig(arch="tv_resnet18", n_classes=6))
    ck = load_checkpoint(out)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(ck.model(x), tv.eval()(x))


def test_save_into_unwritable_place_leaves_nothing(tmp_path: Path):
    # A regular file where the folder should be: unwritable for every user, root included (a read-only
    # folder is not: root writes there, so that version of this test could only skip on CI).
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file\n")
    model = create_model("mnist_cnn", n_classes=2, in_channels=1)
    with pytest.raises(RnDeployError, match=r"not_a_dir/m\.pt: cannot write here"):
        save_checkpoint(blocker / "m.pt", model, ModelConfig(arch="mnist_cnn", n_classes=2, in_channels=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_dir"] and blocker.read_text() == "a file\n"

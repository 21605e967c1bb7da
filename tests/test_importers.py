"""`rn-deploy import`: fastai, timm and torchvision ResNets become rn-deploy checkpoints with the same logits.

The independent answer is each source library's own forward pass on the same (random) weights: nothing can be
downloaded here, so every parameter and BatchNorm statistic is randomised first. That matters: with the libraries'
zero-initialised last BatchNorm a residual branch adds nothing, and a wrong key mapping inside it would go unseen.
Planted bug (tried): mapping timm's ``downsample.1``/``.2`` onto ``idconv.1``/``.0`` (conv and BN swapped) fails the
load with a shape mismatch; mapping fastai's ``convpath.0`` and ``convpath.1`` the other way round in a basic block
loads (same shapes) and fails the logits comparison.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rn_deploy.checkpoint import load_checkpoint
from rn_deploy.cli import main
from rn_deploy.errors import CheckpointError
from rn_deploy.importers import convert, import_weights, read_state_dict

from .conftest import randomise_batchnorm, requires

try:
    import timm

    HAS_TIMM = True
except ImportError:
    HAS_TIMM = False
try:
    from fastai.vision.models.xresnet import xresnet18, xresnet50

    HAS_FASTAI = True
except ImportError:
    HAS_FASTAI = False
try:
    import torchvision

    HAS_TORCHVISION = True
except ImportError:
    HAS_TORCHVISION = False

# Each test needs only the library that writes its source (none for the pickle-safety and unknown-layout tests).
NEEDS = {"fastai": requires(HAS_FASTAI, "fastai not installed (pip install -e '.[test]', see README)"),
         "timm": requires(HAS_TIMM, "timm not installed (pip install -e '.[test]', see README)"),
         "torchvision": requires(HAS_TORCHVISION, "torchvision not installed (pip install torchvision)")}
needs_fastai, needs_timm = NEEDS["fastai"], NEEDS["timm"]

N_CLASSES = 5
SIZES = [(32, 32), (47, 61), (64, 64)]


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (no zero-initialised branch), BatchNorm statistics away from their defaults; eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, (2.0 / p[0].numel()) ** 0.5)
            else:
                p.uniform_(-0.2, 0.2)
    return randomise_batchnorm(model).eval()


def source_model(library: str, name: str, n_classes: int = N_CLASSES) -> torch.nn.Module:
    """A model built by its own library (random initial weights)."""
    if library == "fastai":
        return {"xresnet18": xresnet18, "xresnet50": xresnet50}[name](n_out=n_classes)
    if library == "timm":
        return timm.create_model(name, pretrained=False, num_classes=n_classes)
    return getattr(torchvision.models, name)(weights=None, num_classes=n_classes)


def assert_same_logits(source: torch.nn.Module, ours: torch.nn.Module) -> None:
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        with torch.no_grad():
            want, got = source(x), ours(x)
        err = ((got - want).norm() / want.norm()).item()
        assert err < 1e-5, f"{h}x{w}: relative L2 {err:.2e}"


# The three resnet50s also go end to end in tests/test_import_pipeline.py.
CASES = [("fastai", "xresnet18", "resnet18"), ("fastai", "xresnet50", "resnet50"), ("timm", "resnet18d", "resnet18"),
         ("timm", "resnet50d", "resnet50"), ("timm", "resnet18", "tv_resnet18"), ("torchvision", "resnet18", "tv_resnet18")]


@pytest.mark.parametrize(("library", "name", "arch"), [pytest.param(*c, marks=NEEDS[c[0]], id=f"{c[0]}-{c[1]}") for c in CASES])
def test_imported_logits_equal_the_source_library(tmp_path: Path, library: str, name: str, arch: str):
    src = randomised(source_model(library, name))
    torch.save(src.state_dict(), tmp_path / "weights.pth")
    res = import_weights(tmp_path / "weights.pth", tmp_path / "model.pt", image_size=64)
    assert (res.arch, res.source_arch) == (arch, name)
    assert res.library in (library, "timm/torchvision")
    ck = load_checkpoint(tmp_path / "model.pt")
    assert ck.config.n_classes == N_CLASSES and ck.config.image_size == [64, 64]
    assert ck.train["source_sha256"] == res.source_sha256
    assert_same_logits(src, ck.model)


@needs_fastai
def test_fastai_learn_save_with_optimizer_state(tmp_path: Path):
    """learn.save() stores {'model', 'opt'}; the optimiser state names fastcore's L, which is never built."""
    from fastai.learner import save_model
    from fastai.optimizer import Adam

    src = randomised(xresnet18(n_out=N_CLASSES))
    opt = Adam(list(src.parameters()), lr=1e-3)
    src.train()
    src(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    src.eval()
    save_model(tmp_path / "stage1.pth", src, opt, with_opt=True)
    res = CliRunner().invoke(main, ["import", str(tmp_path / "stage1.pth"), "-o", str(tmp_path / "m.pt"), "--classes", "a,b,c,d,e",
                                    "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["config"]["class_names"] == ["a", "b", "c", "d", "e"]
    assert_same_logits(src, load_checkpoint(tmp_path / "m.pt").model)


@needs_fastai
def test_fastai_export_pickle_is_refused_without_running_it(tmp_path: Path):
    from fastai.data.core import Datasets
    from fastai.learner import Learner
    from fastcore.basics import noop

    dls = Datasets([torch.zeros(3, 8, 8)] * 4, tfms=[[noop], [noop]]).dataloaders(bs=2)
    Learner(dls, xresnet18(n_out=2), loss_func=torch.nn.CrossEntropyLoss(), path=tmp_path).export("export.pkl")
    res = CliRunner().invoke(main, ["import", str(tmp_path / "export.pkl"), "-o", str(tmp_path / "m.pt")])
    assert res.exit_code == 1 and "learn.export() pickle" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


class _Boom:
    """Pickles as ``open(marker, "w")``: loading it in full would create the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_code_never_runs(tmp_path: Path):
    torch.save({"conv1.weight": torch.zeros(1), "x": _Boom(tmp_path / "ran")}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="nothing was executed"):
        read_state_dict(tmp_path / "bad.pth")
    assert not (tmp_path / "ran").exists()


REFUSED = [
    pytest.param(lambda: __import__("fastai.vision.learner", fromlist=["x"]).create_vision_model(xresnet18, 3, pretrained=False)
                 .state_dict(), "vision_learner", marks=needs_fastai, id="vision_learner"),
    pytest.param(lambda: __import__("fastai.vision.models.xresnet", fromlist=["x"]).xresnet18_deep(n_out=3).state_dict(), "6 groups",
                 marks=needs_fastai, id="xresnet18_deep"),
    pytest.param(lambda: timm.create_model("resnet50c", num_classes=3).state_dict(), "resnet\\*c", marks=needs_timm,
                 id="timm-resnet50c"),
    pytest.param(lambda: timm.create_model("resnet26t", num_classes=3).state_dict(), "stem widths \\[24, 32, 64\\]",
                 marks=needs_timm, id="timm-resnet26t"),
    pytest.param(lambda: torchvision.models.efficientnet_b0(num_classes=3).state_dict(), "not a ResNet state_dict",
                 marks=NEEDS["torchvision"], id="torchvision-efficientnet_b0"),
    pytest.param(lambda: {"head.weight": torch.zeros(3, 8), "head.bias": torch.zeros(3)}, "not a ResNet state_dict", id="head-only"),
    pytest.param(lambda: {"features.weight": torch.zeros(2)}, "not a ResNet state_dict", id="unknown"),
]


@pytest.mark.parametrize(("state", "message"), REFUSED)
def test_architectures_without_an_equivalent_are_refused(state, message: str):
    with pytest.raises(CheckpointError, match=message):
        convert(state())


@pytest.mark.parametrize(("state", "message"), REFUSED)
def test_every_refusal_names_the_file_in_one_line(state, message: str, tmp_path: Path):
    """``rn-deploy import`` of each refused layout: one line that starts with the file's path (issue 32.12)."""
    src = tmp_path / "their weights.pth"
    torch.save(state(), src)
    res = CliRunner().invoke(main, ["import", str(src), "-o", str(tmp_path / "m.pt")])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert res.output.startswith(f"error: {src}: ") and re.search(message, res.output), res.output
    assert not (tmp_path / "m.pt").exists()


@needs_timm
def test_metadata_from_json_flags_and_wrappers(tmp_path: Path):
    src = randomised(timm.create_model("resnet18d", num_classes=3))
    # DDP-wrapped keys and a training checkpoint's {'state_dict': ...}
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ckpt.pth")
    (tmp_path / "meta.json").write_text(json.dumps({"class_names": ["cat", "dog", "eel"], "mean": [0.5, 0.5, 0.5],
                                                    "std": [0.25, 0.25, 0.25], "image_size": [48, 40]}))
    (tmp_path / "classes.txt").write_text("ant\nbee\ncow\n")
    res = CliRunner().invoke(main, ["import", str(tmp_path / "ckpt.pth"), "-o", str(tmp_path / "m.pt"), "--meta",
                                    str(tmp_path / "meta.json"), "--classes", str(tmp_path / "classes.txt"), "--std", "0.2,0.2,0.2"])
    assert res.exit_code == 0, res.output
    cfg = load_checkpoint(tmp_path / "m.pt").config
    assert cfg.class_names == ["ant", "bee", "cow"] and cfg.mean == [0.5] * 3 and cfg.std == [0.2] * 3 and cfg.image_size == [48, 40]
    bad = CliRunner().invoke(main, ["import", str(tmp_path / "ckpt.pth"), "-o", str(tmp_path / "n.pt"), "--classes", "a,b"])
    assert bad.exit_code == 1 and "2 class names for n_classes=3" in bad.output and not (tmp_path / "n.pt").exists()


@needs_timm
def test_safetensors_with_a_timm_config_beside(tmp_path: Path):
    """A timm/Hugging Face folder (model.safetensors + config.json) carries its labels, mean/std and input size."""
    from safetensors.torch import save_file

    src = randomised(timm.create_model("resnet50d", num_classes=2))
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet50d", "num_classes": 2, "label_names": ["no", "yes"],
                                                      "pretrained_cfg": {"mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3],
                                                                         "input_size": [3, 160, 160]}}))
    cli = CliRunner().invoke(main, ["import", str(tmp_path / "model.safetensors"), "-o", str(tmp_path / "m.pt"), "--json"])
    assert cli.exit_code == 0, cli.output
    res = json.loads(cli.stdout)
    assert res["config"]["class_names"] == ["no", "yes"] and res["config"]["image_size"] == [160, 160] and res["config"]["mean"] == [0.4] * 3
    assert_same_logits(src, load_checkpoint(tmp_path / "m.pt").model)

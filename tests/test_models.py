from __future__ import annotations

import pytest
import torch
from torch import nn

from rn_deploy.errors import ModelError
from rn_deploy.models import count_parameters, create_model, get_model_spec, list_models, register_model

ALL = list_models()


def test_registry_lists_the_seed_architectures():
    for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet18_bottleneck",
                 "resnet34_bottleneck", "fcn", "mnist_cnn", "mnist_resnet", "tv_resnet18", "tv_resnet50"]:
        assert name in ALL


@pytest.mark.parametrize("name", ALL)
def test_forward_any_size(name: str):
    spec = get_model_spec(name)
    ch = spec.default_in_channels
    model = create_model(name, n_classes=7, in_channels=ch).eval()
    lo = spec.min_size
    with torch.no_grad():
        for b, h, w in [(2, 64, 64), (1, 97, 131), (1, lo, lo)]:
            out = model(torch.randn(b, ch, h, w))
            assert out.shape == (b, 7)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "mnist_cnn", "fcn"])
def test_in_channels_override(name: str):
    model = create_model(name, n_classes=3, in_channels=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 40, 36)).shape == (1, 3)


def _conv_layer(ni: int, nf: int, ks: int = 3) -> int:
    return ni * nf * ks * ks + 2 * nf  # conv without bias + BatchNorm weight/bias


def _hand_count_resnet(layers: list[int], expansion: int, n_out: int, c_in: int = 3) -> int:
    """The chapter's formulas, counted independently of the module code."""
    total = _conv_layer(c_in, 32) + _conv_layer(32, 32) + _conv_layer(32, 64)
    sizes = [64] + [c * expansion for c in (64, 128, 256, 512)]
    for i, n in enumerate(layers):
        for j in range(n):
            ni = sizes[i] if j == 0 else sizes[i + 1]
            nf = sizes[i + 1]
            if expansion == 1:
                total += _conv_layer(ni, nf) + _conv_layer(nf, nf)
            else:
                total += _conv_layer(ni, nf // 4, 1) + _conv_layer(nf // 4, nf // 4) + _conv_layer(nf // 4, nf, 1)
            if ni != nf:
                total += _conv_layer(ni, nf, 1)
    return total + sizes[-1] * n_out + n_out


@pytest.mark.parametrize("name,layers,expansion", [("resnet18", [2, 2, 2, 2], 1), ("resnet34", [3, 4, 6, 3], 1),
                                                   ("resnet50", [3, 4, 6, 3], 4), ("resnet18_bottleneck", [2, 2, 2, 2], 4)])
def test_parameter_counts_match_hand_count(name: str, layers: list[int], expansion: int):
    model = create_model(name, n_classes=1000)
    assert count_parameters(model) == _hand_count_resnet(layers, expansion, 1000)


def test_torchvision_counts_match_published():
    # torchvision's documented parameter counts for its ImageNet ResNets.
    assert count_parameters(create_model("tv_resnet18", n_classes=1000)) == 11_689_512
    assert count_parameters(create_model("tv_resnet50", n_classes=1000)) == 25_557_032


def test_last_batchnorm_of_each_block_is_zero_and_block_starts_as_identity():
    model = create_model("resnet18", n_classes=10).eval()
    from rn_deploy.models import ResBlock

    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 8
    for blk in blocks:
        last_bn = [m for m in blk.convs.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        assert torch.count_nonzero(last_bn.weight) == 0
    same = blocks[1]  # stride 1, same channels: exactly relu(x)
    x = torch.randn(1, 64, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(same(x), torch.relu(x))


def test_resblock_skip_path_is_avgpool_ceil_mode_plus_1x1():
    from rn_deploy.models import ResBlock

    blk = ResBlock(64, 128, stride=2)
    assert isinstance(blk.pool, nn.AvgPool2d) and blk.pool.ceil_mode
    conv = blk.idconv[0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
    assert blk(torch.randn(1, 64, 15, 15)).shape == (1, 128, 8, 8)


def test_unknown_and_duplicate_names_are_errors():
    with pytest.raises(ModelError, match="unknown architecture 'resnet9'"):
        create_model("resnet9", n_classes=3)
    with pytest.raises(ModelError, match="already registered"):
        register_model("resnet18")(lambda **kw: nn.Identity())
    with pytest.raises(ModelError, match="n_classes"):
        create_model("resnet18", n_classes=0)


def test_the_models_table_matches_every_registered_net():
    """rn_deploy.modeltable (what ``rn-deploy models`` prints without building a net) against the nets themselves:
    parameters at several class/channel counts (counted on the meta device: no weights allocated) and the smallest
    size by a real forward pass (issue 32.12). Regenerate a row with ``ModelFacts(ch, P(1000, ch),
    P(1001, ch) - P(1000, ch), P(1000, ch + 1) - P(1000, ch), torch_min_size(net, ch, cap=224), spec.description)``.
    """
    from rn_deploy.export import torch_min_size
    from rn_deploy.modeltable import MODELS

    assert list(MODELS) == ALL
    for name, facts in MODELS.items():
        spec = get_model_spec(name)
        assert (facts.in_channels, facts.description) == (spec.default_in_channels, spec.description), name
        for n, ch in ((7, 5), (10, None)):  # other classes and channels; then the net whose minimum size is measured
            with torch.device("meta"):
                net = create_model(name, n_classes=n, in_channels=ch or spec.default_in_channels)
            assert facts.parameters(n, ch) == count_parameters(net), (name, n, ch)
        # Real CPU weights without the random init (60 M parameters of kaiming take seconds): constants and BatchNorm's
        # defaults give a finite output wherever the net runs, and whether it runs is all the minimum size asks.
        net = net.to_empty(device="cpu")
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(0.01)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
        assert facts.min_size == torch_min_size(net.eval(), facts.in_channels, cap=224), name


def test_models_command_builds_no_net_and_imports_no_torch():
    import json
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import sys\nfrom rn_deploy.cli import main\ntry:\n    main(['models', '--n-classes', '10', '--json'])\n"
             "except SystemExit as e:\n    assert not e.code, e.code\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip().splitlines()
    assert out[-1] == "False"
    rows = json.loads("\n".join(out[:-1]))
    with torch.device("meta"):
        want = count_parameters(create_model("resnet18", n_classes=10))
    assert [r["name"] for r in rows] == ALL and next(r for r in rows if r["name"] == "resnet18")["params"] == want

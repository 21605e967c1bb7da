"""Seed architectures and the model registry.

The nets are those of fastbook chapter 14 ("ResNets") and the fastai MNIST ResNet lesson, written
fully convolutional: each ends in ``AdaptiveAvgPool2d(1)`` so any input height/width is valid, which
is what lets us export ONNX (and build engines) with dynamic spatial axes.

Builders are thin and registered by name; ``create_model(name, n_classes=..., in_channels=...)`` is
the only way the rest of the toolkit makes a model, so a checkpoint's ``arch`` string is enough to
rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from .errors import ModelError

__all__ = [
    "ConvLayer",
    "ResBlock",
    "ResNet",
    "ModelSpec",
    "register_model",
    "create_model",
    "list_models",
    "get_model_spec",
    "count_parameters",
    "RESNETS",
    "TV_RESNETS",
]


# --------------------------------------------------------------------------------------------
# Building blocks (fastai vocabulary)
# --------------------------------------------------------------------------------------------


class ConvLayer(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d (+ ReLU), padding ``ks // 2``.

    Args:
        ni: input channels.
        nf: output channels.
        ks: kernel size.
        stride: convolution stride.
        act: append a ReLU.
        zero_bn: initialise the BatchNorm weight to zero, so a residual block starts as the
            identity (the "bag of tricks" initialisation).
    """

    def __init__(self, ni: int, nf: int, ks: int = 3, stride: int = 1, act: bool = True, zero_bn: bool = False):
        conv = nn.Conv2d(ni, nf, ks, stride=stride, padding=ks // 2, bias=False)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        bn = nn.BatchNorm2d(nf)
        nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
        layers: list[nn.Module] = [conv, bn]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _conv_block(ni: int, nf: int, stride: int, bottleneck: bool) -> nn.Sequential:
    if bottleneck:
        mid = nf // 4
        return nn.Sequential(
            ConvLayer(ni, mid, 1),
            ConvLayer(mid, mid, stride=stride),
            ConvLayer(mid, nf, 1, act=False, zero_bn=True),
        )
    return nn.Sequential(ConvLayer(ni, nf, stride=stride), ConvLayer(nf, nf, act=False, zero_bn=True))


class ResBlock(nn.Module):
    """Bag-of-tricks residual block: ``relu(convs(x) + idconv(pool(x)))``.

    The skip path downsamples with ``AvgPool2d(2, ceil_mode=True)`` (so odd sizes work) and changes
    channels with a 1x1 ConvLayer, instead of a strided 1x1 conv that would drop 3/4 of the input.

    Args:
        ni: input channels.
        nf: output channels.
        stride: 1 or 2.
        bottleneck: 1x1 -> 3x3 -> 1x1 convs with a middle width of ``nf // 4``.
    """

    def __init__(self, ni: int, nf: int, stride: int = 1, bottleneck: bool = False):
        super().__init__()
        self.convs = _conv_block(ni, nf, stride, bottleneck)
        self.idconv: nn.Module = nn.Identity() if ni == nf else ConvLayer(ni, nf, 1, act=False)
        self.pool: nn.Module = nn.Identity() if stride == 1 else nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.convs(x) + self.idconv(self.pool(x)))


class ClassifierHead(nn.Sequential):
    """Adaptive average pool to 1x1, flatten, linear: valid for any input size."""

    def __init__(self, nf: int, n_classes: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(nf, n_classes))


class _Net(nn.Module):
    """``features`` (fully convolutional) followed by ``head``; timm's forward split."""

    features: nn.Module
    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ResNet(_Net):
    """fastbook chapter 14 ResNet: 3-conv stem + max-pool, four groups of ResBlocks, pooled head.

    Args:
        n_classes: number of outputs.
        layers: blocks per group, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        expansion: 1 for basic blocks, 4 for bottleneck blocks.
        in_channels: image channels.
    """

    def __init__(self, n_classes: int, layers: list[int], expansion: int = 1, in_channels: int = 3):
        super().__init__()
        stem = [
            ConvLayer(in_channels, 32, stride=2),
            ConvLayer(32, 32),
            ConvLayer(32, 64),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        ]
        sizes = [64] + [c * expansion for c in (64, 128, 256, 512)]
        groups = []
        for i, n_blocks in enumerate(layers):
            stride = 1 if i == 0 else 2
            blocks = [
                ResBlock(sizes[i] if j == 0 else sizes[i + 1], sizes[i + 1], stride if j == 0 else 1, expansion == 4)
                for j in range(n_blocks)
            ]
            groups.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*stem, *groups)
        self.head = ClassifierHead(sizes[-1], n_classes)


class FCN(_Net):
    """The chapter's first fully convolutional net: five stride-2 blocks 16 -> 256 channels.

    Args:
        n_classes: number of outputs.
        in_channels: image channels.
        resblocks: each block is ``ResBlock(ni, nf, 2), ResBlock(nf, nf)`` instead of a ConvLayer.
    """

    def __init__(self, n_classes: int, in_channels: int = 3, resblocks: bool = False):
        super().__init__()
        chans = [in_channels, 16, 32, 64, 128, 256]
        blocks: list[nn.Module] = []
        for ni, nf in pairwise(chans):
            if resblocks:
                blocks.append(nn.Sequential(ResBlock(ni, nf, stride=2), ResBlock(nf, nf)))
            else:
                blocks.append(ConvLayer(ni, nf, stride=2))
        self.features = nn.Sequential(*blocks)
        self.head = ClassifierHead(chans[-1], n_classes)


class MnistResBlock(nn.Module):
    """The MNIST lesson's ``res_block``: ``x + conv2(conv1(x))`` at constant width."""

    def __init__(self, nf: int):
        super().__init__()
        self.convs = nn.Sequential(ConvLayer(nf, nf), ConvLayer(nf, nf, zero_bn=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.convs(x)


def _mnist_conv(ni: int, nf: int) -> nn.Conv2d:
    return nn.Conv2d(ni, nf, kernel_size=3, stride=2, padding=1)


class MnistNet(_Net):
    """The MNIST lesson's stride-2 conv stack 8 -> 16 -> 32 -> 16 -> n_classes.

    The lesson ends with a 1x1 grid at 28x28 and flattens it; here an ``AdaptiveAvgPool2d(1)``
    stands before the flatten, so the net is identical at 28x28 and valid at any other size.

    Args:
        n_classes: number of outputs (channels of the last conv).
        in_channels: image channels (1 for MNIST).
        res: the ``mnist_resnet`` variant: ConvLayers each followed by a residual block.
    """

    def __init__(self, n_classes: int, in_channels: int = 1, res: bool = False):
        super().__init__()
        chans = [in_channels, 8, 16, 32, 16]
        layers: list[nn.Module] = []
        for ni, nf in pairwise(chans):
            if res:
                layers += [ConvLayer(ni, nf, stride=2), MnistResBlock(nf)]
            else:
                layers += [_mnist_conv(ni, nf), nn.BatchNorm2d(nf), nn.ReLU(inplace=True)]
        if res:
            # The lesson's last conv_layer ends in a ReLU; logits should be able to go negative.
            layers.append(ConvLayer(chans[-1], n_classes, stride=2, act=False))
        else:
            layers += [_mnist_conv(chans[-1], n_classes), nn.BatchNorm2d(n_classes)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    Attributes:
        name: registry name (the checkpoint's ``arch``).
        builder: ``builder(n_classes=..., in_channels=...) -> nn.Module``.
        min_size: a small training size for the net (tests train at it); the smallest H/W it runs at is
            measured (:func:`rn_deploy.export.torch_min_size`) and declared in its ONNX.
        default_in_channels: channels of the data the net was designed for.
        description: one line for ``rn-deploy models``.
    """

    name: str
    builder: Callable[..., nn.Module]
    min_size: int
    default_in_channels: int
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, min_size: int = 32, default_in_channels: int = 3, description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder`` under ``name``; registering a name twice is an error."""

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ModelError(f"model name {name!r} is already registered; pick another name")
        _REGISTRY[name] = ModelSpec(name, builder, min_size, default_in_channels, description or (builder.__doc__ or "").strip())
        return builder

    return deco


def list_models() -> list[str]:
    """Names of all registered models, in registration order."""
    return list(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown architecture {name!r}; known: {', '.join(_REGISTRY)}") from None


def create_model(name: str, *, n_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a registered model with fresh weights.

    Args:
        name: a name from :func:`list_models`.
        n_classes: number of outputs.
        in_channels: image channels (1 for MNIST-like data, 3 for photos).
    """
    spec = get_model_spec(name)
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ModelError(f"n_classes must be a positive integer, got {n_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ModelError(f"in_channels must be a positive integer, got {in_channels!r}")
    return spec.builder(n_classes=n_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _register_resnet(name: str, layers: list[int], expansion: int) -> None:
    kind = "bottleneck" if expansion == 4 else "basic"
    desc = f"ch.14 ResNet, {kind} blocks {layers}"
    if name == "resnet34_bottleneck":
        desc += " (= resnet50 by construction)"

    def builder(*, n_classes: int, in_channels: int = 3) -> nn.Module:
        return ResNet(n_classes, layers, expansion, in_channels)

    register_model(name, description=desc)(builder)


# name -> (blocks per group, expansion) of the ch.14 ResNets: also how rn_deploy.importers names a foreign
# state_dict's architecture (fastai xresnet*, timm resnet*d: the same nets) from its block counts.
RESNETS: dict[str, tuple[tuple[int, ...], int]] = {
    "resnet18": ((2, 2, 2, 2), 1),
    "resnet34": ((3, 4, 6, 3), 1),
    "resnet50": ((3, 4, 6, 3), 4),
    "resnet101": ((3, 4, 23, 3), 4),
    "resnet152": ((3, 8, 36, 3), 4),
    "resnet18_bottleneck": ((2, 2, 2, 2), 4),
    "resnet34_bottleneck": ((3, 4, 6, 3), 4),
}
for _name, (_layers, _exp) in RESNETS.items():
    _register_resnet(_name, list(_layers), _exp)


@register_model("fcn", description="ch.14 fully convolutional net, stride-2 ConvLayers 16->256")
def fcn(*, n_classes: int, in_channels: int = 3) -> nn.Module:
    return FCN(n_classes, in_channels)


@register_model("fcn_resblock", description="ch.14 FCN with two ResBlocks per stage")
def fcn_resblock(*, n_classes: int, in_channels: int = 3) -> nn.Module:
    return FCN(n_classes, in_channels, resblocks=True)


@register_model("mnist_cnn", min_size=28, default_in_channels=1, description="MNIST lesson stride-2 conv net 8-16-32-16")
def mnist_cnn(*, n_classes: int, in_channels: int = 1) -> nn.Module:
    return MnistNet(n_classes, in_channels)


@register_model("mnist_resnet", min_size=28, default_in_channels=1, description="MNIST lesson net, res_block after each conv")
def mnist_resnet(*, n_classes: int, in_channels: int = 1) -> nn.Module:
    return MnistNet(n_classes, in_channels, res=True)


# torchvision (and timm's plain resnet*, whose keys and maths are torchvision's) depth -> (blocks per group, expansion)
TV_RESNETS: dict[int, tuple[tuple[int, ...], int]] = {
    18: ((2, 2, 2, 2), 1), 34: ((3, 4, 6, 3), 1), 50: ((3, 4, 6, 3), 4), 101: ((3, 4, 23, 3), 4), 152: ((3, 8, 36, 3), 4),
}


def _torchvision_resnet(depth: int, n_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, f"resnet{depth}")
    # zero_init_residual: the same identity-at-start trick as our ResBlocks.
    model = builder(weights=None, num_classes=n_classes, zero_init_residual=True)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _register_tv(depth: int) -> None:
    def builder(*, n_classes: int, in_channels: int = 3) -> nn.Module:
        return _torchvision_resnet(depth, n_classes, in_channels)

    register_model(f"tv_resnet{depth}", description=f"torchvision ResNet-{depth} (imported checkpoints: torchvision, timm resnet{depth})")(builder)


for _depth in TV_RESNETS:
    _register_tv(_depth)

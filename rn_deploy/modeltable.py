"""The registered nets' facts ``rn-deploy models`` prints, computed once: torch-free, so the listing runs no model.

Parameters are affine in the class count (the last layer) and the input channels (the first conv), so three numbers
per net give every count. ``tests/test_models.py`` rebuilds every net and checks this table against it (parameters at
several class/channel counts, the smallest size by a real forward pass): edit the registry, then regenerate the
table with the snippet in that test's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFacts:
    """One registered net, as ``rn-deploy models`` shows it.

    Attributes:
        in_channels: the channels of the data it was designed for (the registry's ``default_in_channels``).
        params: parameters at 1000 classes and ``in_channels`` channels.
        per_class: parameters one more class adds.
        per_channel: parameters one more input channel adds.
        min_size: the smallest square H = W at which PyTorch runs it with a finite output
            (:func:`rn_deploy.export.torch_min_size`, capped at 224), at ``in_channels``.
        description: the registry's one line.
    """

    in_channels: int
    params: int
    per_class: int
    per_channel: int
    min_size: int
    description: str

    def parameters(self, n_classes: int = 1000, in_channels: int | None = None) -> int:
        """The parameter count with ``n_classes`` outputs and ``in_channels`` input channels (default: its own)."""
        ch = self.in_channels if in_channels is None else in_channels
        return self.params + (n_classes - 1000) * self.per_class + (ch - self.in_channels) * self.per_channel


# name -> facts, in the registry's order (rn_deploy.models.list_models).
MODELS: dict[str, ModelFacts] = {
    "resnet18": ModelFacts(3, 11708744, 513, 288, 1, 'ch.14 ResNet, basic blocks [2, 2, 2, 2]'),
    "resnet34": ModelFacts(3, 21816904, 513, 288, 1, 'ch.14 ResNet, basic blocks [3, 4, 6, 3]'),
    "resnet50": ModelFacts(3, 25576264, 2049, 288, 1, 'ch.14 ResNet, bottleneck blocks [3, 4, 6, 3]'),
    "resnet101": ModelFacts(3, 44568392, 2049, 288, 1, 'ch.14 ResNet, bottleneck blocks [3, 4, 23, 3]'),
    "resnet152": ModelFacts(3, 60212040, 2049, 288, 1, 'ch.14 ResNet, bottleneck blocks [3, 8, 36, 3]'),
    "resnet18_bottleneck": ModelFacts(3, 16014408, 2049, 288, 1, 'ch.14 ResNet, bottleneck blocks [2, 2, 2, 2]'),
    "resnet34_bottleneck": ModelFacts(3, 25576264, 2049, 288, 1, 'ch.14 ResNet, bottleneck blocks [3, 4, 6, 3] (= resnet50 by construction)'),
    "fcn": ModelFacts(3, 650104, 257, 144, 1, 'ch.14 fully convolutional net, stride-2 ConvLayers 16->256'),
    "fcn_resblock": ModelFacts(3, 3054632, 257, 160, 1, 'ch.14 FCN with two ResBlocks per stage'),
    "mnist_cnn": ModelFacts(1, 157656, 147, 72, 1, 'MNIST lesson stride-2 conv net 8-16-32-16'),
    "mnist_resnet": ModelFacts(1, 185672, 146, 72, 1, 'MNIST lesson net, res_block after each conv'),
    "tv_resnet18": ModelFacts(3, 11689512, 513, 3136, 1, 'torchvision ResNet-18 (imported checkpoints: torchvision, timm resnet18)'),
    "tv_resnet34": ModelFacts(3, 21797672, 513, 3136, 1, 'torchvision ResNet-34 (imported checkpoints: torchvision, timm resnet34)'),
    "tv_resnet50": ModelFacts(3, 25557032, 2049, 3136, 1, 'torchvision ResNet-50 (imported checkpoints: torchvision, timm resnet50)'),
    "tv_resnet101": ModelFacts(3, 44549160, 2049, 3136, 1, 'torchvision ResNet-101 (imported checkpoints: torchvision, timm resnet101)'),
    "tv_resnet152": ModelFacts(3, 60192808, 2049, 3136, 1, 'torchvision ResNet-152 (imported checkpoints: torchvision, timm resnet152)'),
}

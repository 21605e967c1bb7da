"""A layer table like fastai's ``learn.summary()``: type, output shape, parameters, trainable, mult-adds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .strictjson import ToDict


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int]
    params: int
    trainable: bool
    macs: int


@dataclass
class Summary(ToDict):
    rows: list[LayerRow]
    input_shape: list[int]
    total_params: int
    trainable_params: int
    macs: int

    def table(self) -> str:
        w = max([len(r.name) for r in self.rows] + [5])
        lines = [f"{'layer':<{w}}  {'type':<18} {'output shape':<22} {'params':>12}  trainable  {'mult-adds':>14}"]
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            lines.append(f"{r.name:<{w}}  {r.type:<18} {str(r.output_shape):<22} {r.params:>12,}  {str(r.trainable):<9}  {r.macs:>14,}")
        lines.append("-" * len(lines[0]))
        lines.append(f"input {self.input_shape}; total params {self.total_params:,} (trainable {self.trainable_params:,}); "
                     f"mult-adds per image {self.macs:,}")
        return "\n".join(lines)


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    """Multiply-adds of one forward call for one image (convolutions and linear layers)."""
    per_image = out[0].numel() if out.dim() > 0 else out.numel()
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return per_image * (m.in_channels // m.groups) * kh * kw
    if isinstance(m, nn.Linear):
        return per_image * m.in_features
    return 0


def summarize(model: nn.Module, input_shape: tuple[int, int, int, int]) -> Summary:
    """Run one forward pass at ``input_shape`` (N, C, H, W) and tabulate every module that computes or owns weights.

    Each parameter is counted once, in the module that owns it directly, so the total equals
    ``sum(p.numel() for p in model.parameters())``. Mult-adds are per image.
    """
    rows: list[LayerRow] = []
    counted: set[int] = set()
    names = {id(m): n for n, m in model.named_modules()}

    def hook(m: nn.Module, _inp: Any, out: Any) -> None:
        own = [p for p in m.parameters(recurse=False) if id(p) not in counted]
        counted.update(id(p) for p in own)
        t = out if isinstance(out, torch.Tensor) else None
        rows.append(LayerRow(names.get(id(m), "?"), type(m).__name__, list(t.shape) if t is not None else [],
                             sum(p.numel() for p in own), any(p.requires_grad for p in m.parameters(recurse=False)),
                             _macs(m, t) if t is not None else 0))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if not list(m.children()) or list(m.parameters(recurse=False))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    leftover = [p for p in model.parameters() if id(p) not in counted]  # owned by modules the forward never called
    if leftover:
        rows.append(LayerRow("(unused in forward)", "-", [], sum(p.numel() for p in leftover), True, 0))
    total = sum(p.numel() for p in model.parameters())
    return Summary(rows, list(input_shape), total, sum(p.numel() for p in model.parameters() if p.requires_grad),
                   sum(r.macs for r in rows))

"""Verification against PyTorch: the lint of modules the exporter gets wrong, the minimum size, ONNX Runtime at untraced sizes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import names
from ..checkpoint import ModelConfig
from ..errors import ExportError
from ..metrics import Parity, parity

FP32_REL_L2 = 1e-4
FP16_REL_L2 = 1e-2


@dataclass
class VerifyRow:
    """One verification cell: ONNX Runtime (CPU) vs PyTorch FP32 at one input shape."""

    batch: int
    height: int
    width: int
    parity: Parity
    tolerance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "height": self.height, "width": self.width, **self.parity.to_dict(),
                "tolerance_rel_l2": self.tolerance, "passed": self.passed}


def _is_global(output_size: Any) -> bool:
    sizes = output_size if isinstance(output_size, tuple | list) else (output_size,)
    return all(s in (1, None) for s in sizes)


def lint_dynamic(model: nn.Module, in_channels: int, sizes: list[tuple[int, int]]) -> None:
    """Raise :class:`ExportError` if ``model`` cannot be exported with dynamic height/width.

    Checks, in order: adaptive pools with an output larger than 1x1 (the dynamo exporter bakes them
    into fixed pools); a Flatten or Linear that sees a spatial grid larger than 1x1 (its size would
    follow the input size); a forward pass that fails or changes output shape between two sizes.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and not _is_global(m.output_size):
            raise ExportError(
                f"module {name!r} is {m}: the ONNX exporter bakes it into a fixed pool that is wrong at other "
                "input sizes; use AdaptiveAvgPool2d(1) or export with --static HxW"
            )
    seen: list[str] = []

    def hook(mod_name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            x = inputs[0]
            if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[2] * x.shape[3] > 1:
                seen.append(f"{mod_name!r} flattens a {x.shape[2]}x{x.shape[3]} grid")

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Flatten | nn.Linear)]
    shapes = []
    try:
        with torch.no_grad():
            for h, w in sizes:
                try:
                    shapes.append(tuple(model(torch.zeros(1, in_channels, h, w)).shape))
                except RuntimeError as e:
                    raise ExportError(
                        f"model fails at input {h}x{w} ({str(e).splitlines()[0][:120]}); it depends on a fixed input "
                        "size: end the features with AdaptiveAvgPool2d(1), or export with --static HxW"
                    ) from None
    finally:
        for hd in handles:
            hd.remove()
    if seen:
        raise ExportError(f"module {seen[0]}: its output size follows the input size; pool to 1x1 first, or export with --static HxW")
    if len(set(shapes)) > 1:
        raise ExportError(f"output shape changes with input size ({shapes}); the model is not size-agnostic")


def torch_min_size(model: nn.Module, in_channels: int, cap: int) -> int:
    """The smallest square H = W (1..``cap``) at which ``model`` runs in PyTorch with a finite output.

    ``cap`` is the training size: the declared minimum is never above it. The registry's
    ``min_size`` is only a hint; the nets here (padded convs, ceil-mode pools, a global pool) run
    down to 1x1, and export confirms the value with ONNX Runtime (:func:`confirm_min_size`).
    """
    with torch.no_grad():
        for s in range(1, max(cap, 1) + 1):
            try:
                if torch.isfinite(model(torch.zeros(1, in_channels, s, s))).all():
                    return s
            except RuntimeError:
                continue
    return max(cap, 1)


def confirm_min_size(path: Path, model: nn.Module, config: ModelConfig, start: int, cap: int, tolerance: float = FP32_REL_L2) -> int:
    """The smallest size from ``start`` up to ``cap`` where ONNX Runtime runs ``path`` and agrees with PyTorch."""
    sess = _ort_session(path)
    gen = torch.Generator().manual_seed(1)
    for s in range(start, max(cap, start) + 1):
        x = torch.randn(2, config.in_channels, s, s, generator=gen)
        try:
            out = sess.run([names.OUTPUT], {names.INPUT: x.numpy()})[0]
        except Exception:  # noqa: BLE001 - ORT refuses the size: try the next one
            continue
        with torch.no_grad():
            p = parity(model(x).float().numpy(), out)
        if p.finite and p.rel_l2 <= tolerance:
            return s
    return max(cap, start)


def verification_shapes(sample: tuple[int, int], static: tuple[int, int] | None, lo: int) -> list[tuple[int, int, int]]:
    """At least three shapes other than the trace shape: odd, non-square, the declared minimum ``lo``, and a batch > 1."""
    if static is not None:
        return [(1, *static), (3, *static)]
    cands = [(1, 97, 211), (3, lo + 13, lo + 29), (2, lo, lo), (2, sample[0] + 31, sample[1] + 7)]
    return [(b, max(h, lo), max(w, lo)) for b, h, w in cands if (h, w) != sample]


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verify_onnx(
    path: Path, model: nn.Module, config: ModelConfig, shapes: list[tuple[int, int, int]], tolerance: float, fp16_io: bool = False,
    seed: int = 0,
) -> list[VerifyRow]:
    """Run ONNX Runtime (CPU) and PyTorch FP32 on the same random inputs at each shape."""
    sess = _ort_session(path)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b, h, w in shapes:
        x = torch.randn(b, config.in_channels, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x).float().numpy()
        feed = x.numpy().astype(np.float16 if fp16_io else np.float32)
        out = sess.run([names.OUTPUT], {names.INPUT: feed})[0]
        p = parity(ref, out)
        rows.append(VerifyRow(b, h, w, p, tolerance, p.finite and p.rel_l2 <= tolerance))
    return rows


def format_verification(rows: list[VerifyRow]) -> str:
    lines = [f"{'shape':>18} {'max_abs':>10} {'rel_l2':>10} {'cosine':>9} {'top1':>6} {'tol':>8}  result"]
    for r in rows:
        p = r.parity
        lines.append(f"{f'{r.batch}x{r.height}x{r.width}':>18} {p.max_abs:10.2e} {p.rel_l2:10.2e} {p.cosine:9.6f} "
                     f"{p.top1:6.2f} {r.tolerance:8.0e}  {'ok' if r.passed else 'FAIL'}")
    return "\n".join(lines)

"""The gates of ``rn-deploy optimize``: parity with the FP32 reference, top-1 and agreement on real data at each size.

Everything is the toolkit's own verdict code: :func:`rn_deploy.evaluate.predict_split`, :func:`~rn_deploy.evaluate.accuracy`,
:func:`~rn_deploy.evaluate.agreement` and :func:`~rn_deploy.evaluate.judge` with :func:`~rn_deploy.evaluate.limits_for`
(the limits ``rn-deploy eval`` applies), and :func:`rn_deploy.compare.compare` with the per-precision tolerances of
``rn-deploy validate`` on real images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import RnDeployError
from .make import Source

PARITY_IMAGES = 32  # real images of the parity batch, at the training size


@dataclass
class Reference:
    """The FP32 reference on the judged images: predictions and accuracy per size, logits of the parity batch."""

    runner: Any
    images: Any
    sizes: list[int]
    train_side: int
    preds: dict[int, Any] = field(default_factory=dict)
    acc: dict[int, dict[str, Any]] = field(default_factory=dict)
    parity_x: Any = None
    parity_logits: np.ndarray | None = None

    @property
    def top1(self) -> float:
        return float(self.acc[self.train_side]["top1"])


@dataclass
class Judgement:
    """What the gates found for one candidate (``passed`` only when every gate was run and passed)."""

    top1: float | None = None
    agreement: float | None = None
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    per_size: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_images(src: Source, limit: int | None, split: str | None = None) -> Any:
    """The held-out images ``rn-deploy eval`` judges on with the same dataset, ``--limit`` and seed."""
    from ..datasets.sources import default_split, load_split
    from ..evaluate import check_data_fits, default_names

    cfg = src.config
    images = load_split(src.dataset, src.data, split or default_split(src.dataset), limit=limit, seed=src.seed,
                        presize=cfg.presize or max(cfg.image_size), channels=cfg.in_channels,
                        class_names=cfg.class_names if src.dataset == "imagefolder" and not default_names(cfg) else None)
    check_data_fits(images, cfg, str(src.data or src.dataset))
    return images


def reference_runner(src: Source) -> Any:
    """The FP32 reference: the checkpoint in PyTorch (CPU), or the FP32 ONNX on ONNX Runtime CPU."""
    if src.kind == "checkpoint":
        from ..checkpoint import load_checkpoint
        from ..runners import TorchRunner

        return TorchRunner(load_checkpoint(src.path).model, device="cpu")
    from ..reference import onnx_reference

    return onnx_reference(src.path)[0]


def make_reference(src: Source, images: Any, sizes: Sequence[int], batch: int = 256) -> Reference:
    """Run the reference once per size and on the parity batch."""
    from ..compare import owned
    from ..evaluate import accuracy, at_size, predict_split
    from ..preprocess import eval_batch

    cfg = src.config
    side = min(cfg.image_size)
    ref = Reference(reference_runner(src), images, sorted({*sizes, side}), side)
    for s in ref.sizes:
        pred = predict_split(ref.runner, images, at_size(cfg, s), batch=batch, progress=False)
        ref.preds[s], ref.acc[s] = pred, accuracy(pred, cfg.class_names)
    ref.parity_x = eval_batch(images.images[:PARITY_IMAGES], tuple(cfg.image_size), cfg.mean, cfg.std)
    ref.parity_logits = owned(ref.runner.infer(ref.runner.prepare(ref.parity_x)))
    return ref


def judge_runner(runner: Any, precision: str, src: Source, ref: Reference, max_drop: float, batch: int = 256) -> Judgement:
    """Every gate for one candidate's runner: parity at the training size, then top-1/agreement at each size."""
    from ..compare import compare_runner, effective_tolerances
    from ..evaluate import accuracy, agreement, at_size, judge, limits_for, predict_split

    j = Judgement()
    tols = effective_tolerances(None, real_images=True)
    tol = tols.get(precision, tols["fp32"])
    assert ref.parity_logits is not None  # make_reference sets it
    cmp = compare_runner(runner, runner.prepare(ref.parity_x), ref.parity_logits, tol)
    j.parity = {**cmp.parity, "tolerance": cmp.tolerance, "images": len(ref.parity_x)}
    j.failures += [f"parity on {len(ref.parity_x)} real images: {f}" for f in cmp.failures]
    limits = limits_for(precision, max_drop)
    for s in ref.sizes:
        try:
            pred = predict_split(runner, ref.images, at_size(src.config, s), batch=batch, progress=False)
        except RnDeployError as e:  # an engine whose profiles do not take this size: not a size it accepts
            j.per_size.append({"size": s, "ran": False, "reason": f"not accepted: {e}", "passed": True})
            continue
        acc = accuracy(pred, src.config.class_names)
        agree, _ = agreement(pred, ref.preds[s])
        drop, fails = judge(acc, ref.acc[s], agree, pred.nonfinite, limits)
        j.per_size.append({"size": s, "ran": True, "top1": acc["top1"], "agreement": agree, "drop_points": drop,
                           "nonfinite": pred.nonfinite, "passed": not fails})
        j.failures += [f"at {s} px: {f}" for f in fails]
        if s == ref.train_side:
            j.top1, j.agreement = float(acc["top1"]), float(agree)
    if j.top1 is None:
        j.failures.append(f"not run at the training size {ref.train_side} px")
    j.passed = not j.failures
    return j

"""Parity metrics between a reference output and a candidate (logits of shape (B, C))."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Parity:
    """How close ``out`` is to ``ref``.

    Attributes:
        max_abs: largest absolute difference.
        mean_abs: mean absolute difference.
        rel_l2: ``||out - ref|| / ||ref||`` over the whole batch.
        cosine: smallest per-sample cosine similarity. A sample whose output is constant across
            classes (all zero included) carries no class information and scores 0.0, never 1.0.
        top1: fraction of samples with the same arg-max.
        top5: mean overlap of the top-5 sets, or None when the model has 5 classes or fewer (the
            overlap would be 1.0 by construction).
        finite: the candidate has no NaN/Inf.
        constant: some sample's output is constant across classes (a dead model or engine).
        samples: how many samples (images) were compared.
    """

    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    top1: float
    top5: float | None
    finite: bool
    constant: bool
    samples: int

    def to_dict(self) -> dict[str, float | bool | int | None]:
        """JSON-safe: a non-finite number (rel_l2 of a NaN output) becomes None; ``finite`` says why."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def parity(ref: np.ndarray, out: np.ndarray) -> Parity:
    """Compare ``out`` with ``ref`` (both (B, ...), flattened per sample)."""
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    out = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
    if ref.shape != out.shape:
        raise ValueError(f"output shape {out.shape} differs from reference {ref.shape}")
    finite = bool(np.isfinite(out).all())
    diff = np.abs(out - ref)
    denom = float(np.linalg.norm(ref)) or 1.0
    # A row that is constant (all zero included) has no direction among the classes: cosine 0.
    flat = ~(np.ptp(out, axis=1) > 0) if out.size else np.zeros(len(out), bool)
    num = np.sum(out * ref, axis=1)
    norms = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    ok = (norms > 0) & ~flat
    cos = np.where(ok, num / np.where(ok, norms, 1.0), 0.0)
    n_classes = ref.shape[1]
    top_ref = np.argsort(-ref, axis=1, kind="stable")
    top_out = np.argsort(-out, axis=1, kind="stable")
    top5: float | None = None
    if n_classes > 5:
        top5 = float(np.mean([len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(top_ref, top_out, strict=True)]))
    return Parity(
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        rel_l2=float(np.linalg.norm(out - ref) / denom) if finite else float("inf"),
        cosine=float(cos.min()) if finite and len(cos) else 0.0,
        top1=float(np.mean(top_ref[:, 0] == top_out[:, 0])) if len(ref) else 0.0,
        top5=top5,
        finite=finite,
        constant=bool(flat.any()),
        samples=len(ref),
    )

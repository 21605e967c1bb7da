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
        cosine: smallest per-sample cosine similarity.
        top1: fraction of samples with the same arg-max.
        top5: mean overlap of the top-5 sets (top-k with k = min(5, C)).
        finite: the candidate has no NaN/Inf.
    """

    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    top1: float
    top5: float
    finite: bool

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def parity(ref: np.ndarray, out: np.ndarray) -> Parity:
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    out = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
    if ref.shape != out.shape:
        raise ValueError(f"output shape {out.shape} differs from reference {ref.shape}")
    finite = bool(np.isfinite(out).all())
    diff = np.abs(out - ref)
    denom = float(np.linalg.norm(ref)) or 1.0
    num = np.sum(out * ref, axis=1)
    norms = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
    cos = np.where(norms > 0, num / np.where(norms > 0, norms, 1.0), 1.0)
    k = min(5, ref.shape[1])
    top_ref = np.argsort(-ref, axis=1)[:, :k]
    top_out = np.argsort(-out, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_out, strict=True)])
    return Parity(
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        rel_l2=float(np.linalg.norm(out - ref) / denom) if finite else float("inf"),
        cosine=float(cos.min()) if finite else float("nan"),
        top1=float(np.mean(top_ref[:, 0] == top_out[:, 0])),
        top5=float(overlap),
        finite=finite,
    )

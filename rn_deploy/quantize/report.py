"""What quantize reports: the FP32 reference, every rung tried and the one chosen, as JSON and Markdown."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .form import QuantizeError
from .recipes import Recipe


class GateFailed(QuantizeError):
    """No rung of the ladder passed the gate (top-1 drop, agreement); :attr:`report` says what each rung reached."""

    def __init__(self, message: str, report: QuantizeReport):
        super().__init__(message)
        self.report = report


@dataclass
class Rung:
    """One rung of the ladder and what its Q/DQ model reached on the held-out split."""

    why: str
    recipe: Recipe
    excluded_nodes: list[str]
    top1: float
    top5: float | None
    drop_pts: float
    passed: bool
    seconds: float
    qdq: dict[str, int]
    per_class: list[dict[str, Any]]
    lost: int = 0
    gained: int = 0
    agreement: float = 1.0  # fraction of images where it picks FP32's class
    failures: list[str] = field(default_factory=list)  # why it fails the gate (rn_deploy.evaluate.judge); empty: passed


@dataclass
class QuantizeReport:
    """What ``quantize`` did: the FP32 reference, every rung tried, the one chosen and where it was written."""

    source: str
    output: str | None
    precision: str
    max_drop: float | None
    min_agreement: float | None
    calib_dataset: str
    calib_split: str
    eval_split: str
    eval_images: int
    reference: dict[str, Any]
    rungs: list[Rung] = field(default_factory=list)
    chosen: int | None = None
    forced: bool = False
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.chosen is not None and self.rungs[self.chosen].passed

    def gate_text(self) -> str:
        """The limits in words: ``drop <= 1 pt, agreement >= 95.0%``."""
        parts = [f"drop <= {self.max_drop:g} pt" if self.max_drop is not None else "",
                 f"agreement with FP32 >= {100 * self.min_agreement:.1f}%" if self.min_agreement is not None else ""]
        return ", ".join(p for p in parts if p) or "none"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def markdown(self) -> str:
        ref = self.reference
        out = [f"# Quantization report: {Path(self.source).name} -> {self.precision}", "",
               f"- reference (FP32 ONNX, ONNX Runtime CPU): top-1 {ref['top1'] * 100:.2f}% on {self.eval_images} "
               f"{self.calib_dataset} {self.eval_split} images",
               f"- calibration: {self.calib_dataset} {self.calib_split} split; gate (eval's): {self.gate_text()}",
               f"- result: {'passed' if self.passed else 'FAILED'}"
               + (f", rung {self.chosen + 1} written to {self.output}" if self.chosen is not None and self.output else ", nothing written"),
               "", "| rung | why | recipe | top-1 % | drop (pt) | agreement % | lost / gained | gate | s |",
               "|---|---|---|---|---|---|---|---|---|"]
        for i, r in enumerate(self.rungs):
            mark = " (chosen)" if i == self.chosen else ""
            out.append(f"| {i + 1}{mark} | {r.why} | {r.recipe.label()} | {r.top1 * 100:.2f} | {r.drop_pts:+.2f} | "
                       f"{r.agreement * 100:.2f} | {r.lost} / {r.gained} | {'pass' if r.passed else 'fail'} | {r.seconds:.1f} |")
        if self.chosen is not None:
            r = self.rungs[self.chosen]
            out += ["", f"Per-class top-1 (rung {self.chosen + 1}):", "", "| class | images | FP32 % | quantized % | delta (pt) |",
                    "|---|---|---|---|---|"]
            for c in r.per_class:
                delta = "" if c["delta_pts"] is None else f"{c['delta_pts']:+.2f}"
                out.append(f"| {c['class']} | {c['count']} | {_pct(c['reference'])} | {_pct(c['quantized'])} | {delta} |")
        return "\n".join(out) + "\n"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}"


def report_paths(out: Path) -> tuple[Path, Path]:
    """``MODEL.int8.onnx`` -> ``MODEL.int8.quant.json``, ``MODEL.int8.quant.md``."""
    stem = out.name.removesuffix(".onnx")
    return out.with_name(stem + ".quant.json"), out.with_name(stem + ".quant.md")

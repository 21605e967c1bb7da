"""The validation result types: one :class:`Cell` per (backend, batch, H, W) and the :class:`ValidationReport`.

Written by :mod:`rn_deploy.validate` and read by :mod:`rn_deploy.report` (and the CLI, demo and doctor),
so neither of those two imports the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .benchmark import Latency

__all__ = ["NOTHING_COMPARED", "NOTHING_COMPARED_ONNX", "REPORT_FORMAT", "Cell", "ValidationReport"]

REPORT_FORMAT = "rn-deploy-report/2"
NOTHING_COMPARED = ("nothing was compared: every backend that ran is the PyTorch FP32 reference itself; pass --onnx MODEL.onnx "
                    "(ONNX Runtime CPU runs anywhere), --engine MODEL.engine on a machine with a GPU, or install "
                    "onnxruntime-gpu on a GPU machine for ort-cuda")
# Without --checkpoint the --onnx itself, on ONNX Runtime CPU, is the reference: asking for --onnx again cannot help.
NOTHING_COMPARED_ONNX = ("nothing was compared: without --checkpoint the FP32 reference is the --onnx model itself on ONNX "
                         "Runtime CPU, and no backend independent of it ran here; pass --checkpoint MODEL.pt to compare the "
                         "ONNX with PyTorch, --engine MODEL.engine on a machine with a GPU, or install onnxruntime-gpu on a GPU "
                         "machine for ort-cuda")


@dataclass
class Cell:
    """One (backend, batch, H, W): its latency and, unless it is the reference's twin, its parity."""

    backend: str
    precision: str
    batch: int
    height: int
    width: int
    passed: bool
    parity: dict[str, Any] | None = None
    tolerance: dict[str, float | None] | None = None
    latency: Latency | None = None
    skipped: str | None = None
    failures: list[str] = field(default_factory=list)
    compared: bool = False
    images: int = 0
    artifact: str | None = None


@dataclass
class ValidationReport:
    """The JSON contract of ``rn-deploy validate`` (schema in docs/formats.md)."""

    cells: list[Cell]
    backends: dict[str, dict[str, Any]]
    grid: list[list[int]]
    tolerances: dict[str, dict[str, float | None]]
    reference: str
    inputs: str
    environment: dict[str, Any]
    format: str = REPORT_FORMAT
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)
    allow_skip: bool = False

    @property
    def compared(self) -> list[Cell]:
        """Cells that ran and were compared with the reference."""
        return [c for c in self.cells if c.skipped is None and c.compared]

    @property
    def passed(self) -> bool:
        cmp = self.compared
        return not self.problems and bool(cmp) and all(c.passed for c in cmp)

    def __bool__(self) -> bool:
        return self.passed

    def failure(self) -> str | None:
        """One line saying why the report did not pass (None when it passed)."""
        if self.passed:
            return None
        bad = [c for c in self.compared if not c.passed]
        if bad:
            c = bad[0]
            return (f"{len(bad)} of {len(self.compared)} compared cells out of tolerance (first: {c.backend} "
                    f"{c.batch}x{c.height}x{c.width}: {'; '.join(c.failures)})")
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return self.problems[0] + more
        return NOTHING_COMPARED_ONNX if self.reference.startswith("ort-") else NOTHING_COMPARED

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["failure"] = self.failure()
        return d

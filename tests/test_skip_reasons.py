"""Every skip in the suite names its kind, so strict CI on a GPU host fails nothing that only lacks a GPU.

Under ``RN_DEPLOY_STRICT=1`` (tests/strict.py) a skip whose reason does not start with "no GPU: " or
"no full TensorRT: " fails. A skip that happens only ON a GPU host (a GPU of the wrong compute
capability, a GPU with the CPU onnxruntime that CI keeps, no DLA core) is invisible on CPU-only
machines, so it is checked here from the source: each skip decided by something about the GPU or
TensorRT must name kind ``gpu`` or ``tensorrt``, and all skips go through ``tests/strict.py``'s
``skip``/``requires`` (a bare ``pytest.skip`` cannot name a kind).

Planted (each fails :func:`test_gpu_conditioned_skips_name_their_kind`): the four skips issue 24
item 14 found (tests/test_verdicts.py "a GPU is here: ...", the ORT CUDA provider's error text,
tests/test_portability.py's compute capability, tests/test_quantize.py's DLA core) as they were.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from .conftest import ort_cuda
from .strict import ALLOWED, PREFIX, kind_of

TESTS = Path(__file__).resolve().parent
# What a skip condition says when it is about the GPU or TensorRT (the machine), not a library or data set.
MACHINE = re.compile(r"cuda|gpu|device_capability|dla|RunnerUnavailable|HAS_TRT\b|tensorrt\b", re.I)
BARE = {"pytest.skip", "pytest.importorskip", "pytest.mark.skip", "pytest.mark.skipif"}


def _kind(call: ast.Call) -> str | None:
    for k in call.keywords:
        if k.arg == "kind" and isinstance(k.value, ast.Constant):
            return str(k.value.value)
    return None


class _Skips(ast.NodeVisitor):
    """Each skip call with the conditions it sits under (``if`` tests, ``except`` types, ``requires``' condition)."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.found: list[tuple[int, str, str, str | None]] = []  # line, callee, conditions, kind

    def _under(self, cond: str, nodes: list[ast.stmt]) -> None:
        self.conditions.append(cond)
        for n in nodes:
            self.visit(n)
        self.conditions.pop()

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self._under(ast.unparse(node.test), node.body)
        self._under("not " + ast.unparse(node.test), node.orelse)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self._under(ast.unparse(node.type) if node.type else "except", node.body)

    def visit_Call(self, node: ast.Call) -> None:
        name = ast.unparse(node.func)
        if name in BARE or name in ("skip", "requires"):
            cond = " / ".join(self.conditions + ([ast.unparse(node.args[0])] if name == "requires" and node.args else []))
            self.found.append((node.lineno, name, cond, _kind(node)))
        self.generic_visit(node)


def _skips(path: Path) -> list[tuple[int, str, str, str | None]]:
    v = _Skips()
    v.visit(ast.parse(path.read_text(), str(path)))
    return v.found


def _suite() -> list[Path]:
    # strict.py defines the helpers; test_strict.py runs them (and bare pytest.skip) on purpose in generated files.
    return [p for p in sorted(TESTS.glob("*.py")) if p.name not in ("strict.py", "test_strict.py", "test_skip_reasons.py")]


def test_the_scanner_sees_the_four_skips_issue_24_found():
    """The rule below, on the four skips as they were before the fix: every one is caught."""
    old = '''
def a():
    if HAS_CUDA:
        pytest.skip("a GPU is here: the engine may run")
def b():
    try:
        return OrtRunner(path, provider="cuda")
    except RunnerUnavailable as e:
        skip(str(e))
def c():
    if torch.cuda.get_device_capability() < (8, 0):
        skip("ampere-plus needs a build GPU of compute capability >= 8.0")
def d():
    if trt.Builder(trt.Logger()).num_DLA_cores == 0:
        skip("no DLA core on this device (Jetson/DRIVE only)")
'''
    v = _Skips()
    v.visit(ast.parse(old))
    assert len(v.found) == 4 and all(MACHINE.search(cond) and kind not in ALLOWED for _line, _name, cond, kind in v.found)


@pytest.mark.parametrize("path", _suite(), ids=lambda p: p.name)
def test_gpu_conditioned_skips_name_their_kind(path: Path):
    bad = [f"{path.name}:{line}: {name}(...) under `{cond}` names kind {kind!r}; a skip about the GPU/TensorRT needs "
           "kind='gpu' or 'tensorrt' (and the marker), or strict CI fails it on a GPU host"
           for line, name, cond, kind in _skips(path) if name not in BARE and MACHINE.search(cond) and kind not in ALLOWED]
    bare = [f"{path.name}:{line}: {name}(...): use tests/strict.py's skip()/requires() with a kind"
            for line, name, _c, _k in _skips(path) if name in BARE]
    assert not bad + bare, "\n".join(bad + bare)


@pytest.mark.parametrize("path", _suite(), ids=lambda p: p.name)
def test_reasons_carry_no_prefix_of_their_own(path: Path):
    """``skip``/``requires`` add the prefix; a literal one doubles it ("no full TensorRT: no full TensorRT ...")."""
    text = path.read_text()
    doubled = [p.strip() for p in PREFIX.values() if re.search(rf"(skip|requires)\([^)]*[\"']{re.escape(p.strip())}", text)]
    assert not doubled, f"{path.name}: a reason starts with {doubled}"


def test_ort_cuda_without_a_cuda_provider_is_a_no_gpu_skip(tmp_path: Path):
    """CI's GPU hosts keep the CPU onnxruntime: asking it for CUDA must skip as "no GPU", not as a missing dependency."""
    from rn_deploy.export import export_onnx

    from .conftest import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "m.pt", arch="mnist_cnn", n_classes=10, in_channels=1, size=28)
    onnx_path = Path(export_onnx(ckpt, tmp_path / "m.onnx", verify=False).onnx_path)
    try:
        runner = ort_cuda(onnx_path)
    except pytest.skip.Exception as e:
        assert kind_of(str(e)) == "gpu", str(e)
    else:  # onnxruntime-gpu on a GPU: it runs, nothing to skip
        runner.close()

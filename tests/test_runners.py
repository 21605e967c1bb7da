"""The Runner protocol, checked for what it promises (an isinstance check on a runtime-checkable
Protocol only sees that attributes exist: any signature or return type passes it)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from rn_deploy.export import export_onnx
from rn_deploy.runners import BaseRunner, OrtRunner, Runner, TorchRunner, TrtRunner

from .conftest import make_checkpoint

CLASSES = [TorchRunner, OrtRunner, TrtRunner]
METHODS = [n for n, v in vars(Runner).items() if callable(v) and (not n.startswith("_") or n in ("__enter__", "__exit__"))]
ATTRIBUTES = [n for n in Runner.__annotations__ if n not in METHODS]


def _mismatch(proto: object, impl: object) -> str | None:
    """Why ``impl`` cannot be called the way the protocol's method is, or None."""
    p = list(inspect.signature(proto).parameters.values())[1:]  # type: ignore[arg-type]
    i = list(inspect.signature(impl).parameters.values())[1:]  # type: ignore[arg-type]
    var_pos = any(q.kind is q.VAR_POSITIONAL for q in i)
    for k, pp in enumerate(p):
        if pp.kind is pp.VAR_POSITIONAL:
            if not var_pos:
                return f"takes no *{pp.name}"
        elif not (k < len(i) and i[k].name == pp.name and i[k].kind is pp.kind) and not var_pos:
            return f"parameter {k + 1} is not {pp.name!r}"
    for q in i[len(p):]:
        if q.default is q.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD):
            return f"extra required parameter {q.name!r}"
    want = inspect.signature(proto).return_annotation  # type: ignore[arg-type]
    got = inspect.signature(impl).return_annotation  # type: ignore[arg-type]
    if want != "Any" and got != want:
        return f"returns {got!r}, the protocol says {want!r}"
    return None


def test_protocol_is_what_this_test_checks():
    # If the protocol grows, this test must grow with it.
    assert {"prepare", "infer", "sync", "covers", "close", "__enter__", "__exit__"} <= set(METHODS)
    assert set(ATTRIBUTES) == {"name", "framework", "device", "precision"}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_runner_classes_have_the_protocol_signatures(cls: type[BaseRunner]):
    problems = {m: _mismatch(getattr(Runner, m), getattr(cls, m)) for m in METHODS}
    assert not {m: p for m, p in problems.items() if p}, problems
    for a in ATTRIBUTES:
        assert isinstance(getattr(cls, a), str), a


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("r")
    ck = make_checkpoint(d / "model.pt", arch="mnist_cnn", n_classes=5, in_channels=1, size=28)
    return {"ck": ck, "onnx": Path(export_onnx(ck, d / "m.onnx", verify=False).onnx_path),
            "onnx16": Path(export_onnx(ck, d / "m16.onnx", fp16=True, verify=False).onnx_path)}


@pytest.mark.parametrize("kind,precision", [("torch", "fp32"), ("onnx", "fp32"), ("onnx16", "fp16")])
def test_cpu_runners_keep_the_protocol_promises(models: dict[str, Path], kind: str, precision: str):
    r: Runner = TorchRunner(models["ck"]) if kind == "torch" else OrtRunner(models[kind])
    with r as entered:
        assert entered is r
        assert (r.device, r.precision) == ("cpu", precision) and r.name
        x = torch.randn(3, 1, 37, 53)
        x0 = x.clone()
        assert r.covers(tuple(x.shape)) is None
        y = r.infer(r.prepare(x))
        assert torch.equal(x, x0), "prepare/infer changed the caller's input"
        assert type(y) is torch.Tensor and y.dtype == torch.float32 and y.device.type == "cpu"
        assert y.shape == (3, 5) and bool(torch.isfinite(y).all())
        assert r.sync() is None
        y2 = r.infer(r.prepare(x))
        assert torch.equal(y, y2) and y.data_ptr() != y2.data_ptr()  # owned outputs, not one reused buffer
    r.close()  # closing twice is harmless

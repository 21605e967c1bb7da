"""A full disk stops the run at its first sign, in one line, instead of failing every later test.

The suite writes checkpoints, ONNX files and engines under pytest's temporary directory. When that disk
fills, every later test errors at setup (``tmp_path`` cannot be made), hundreds of tracebacks that bury
the cause (stop 40's CI run). Loaded by tests/conftest.py; proven by tests/test_diskfull.py.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest


def _no_space(exc: BaseException | None) -> OSError | None:
    """The ENOSPC ``OSError`` in ``exc``'s chain of causes and contexts, or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def pytest_exception_interact(node: pytest.Item | pytest.Collector, call: pytest.CallInfo[Any]) -> None:
    full = _no_space(call.excinfo.value if call.excinfo else None)
    if full is not None:
        where = f" writing {full.filename}" if full.filename else ""
        node.session.shouldstop = (f"the disk is full ({full.strerror}{where}, in {node.nodeid}): the suite writes checkpoints, "
                                   "ONNX files and engines under pytest's temporary directory; free space there (or pass "
                                   "--basetemp on a larger disk) and run again")

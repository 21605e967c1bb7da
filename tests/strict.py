"""Skips that cannot hide breakage: the pytest plugin behind ``RN_DEPLOY_STRICT=1``.

Every skip in this suite names its kind in the first words of its reason:

* ``no GPU: ...``            - needs a CUDA GPU; the test carries ``@pytest.mark.gpu``;
* ``no full TensorRT: ...``  - needs the ``tensorrt`` package; the test carries ``@pytest.mark.tensorrt``;
* ``missing dependency: ...`` (or anything else) - a library or data set that ``.ci/run`` installs.

Under ``RN_DEPLOY_STRICT=1`` (``.ci/run`` sets it) only the first two may skip: any other skip,
in a mark, a test body, a fixture or at module level, is reported as a FAILURE, because on CI a
missing dependency is a broken install, not a reason to pass. Independently of strict mode, a test
that skips for the GPU or full TensorRT must carry that marker, so ``-m "not gpu"`` and
``-m "not tensorrt"`` select exactly what they name; a missing marker fails the test.

Use :func:`requires` for a skip decided at import time and :func:`skip` inside a test. Loaded by
``tests/conftest.py``; other pytest runs can load it with ``-p tests.strict``.
"""

from __future__ import annotations

import os
from typing import Any, Literal, NoReturn

import pytest

Kind = Literal["gpu", "tensorrt", "dependency"]
PREFIX: dict[str, str] = {"gpu": "no GPU: ", "tensorrt": "no full TensorRT: ", "dependency": "missing dependency: "}
ALLOWED = ("gpu", "tensorrt")  # the only kinds that may skip under RN_DEPLOY_STRICT=1


def strict() -> bool:
    return os.environ.get("RN_DEPLOY_STRICT", "").strip() not in ("", "0")


def reason_for(reason: str, kind: Kind) -> str:
    if kind not in PREFIX:
        raise ValueError(f"skip kind must be one of {', '.join(PREFIX)}, got {kind!r}")
    return PREFIX[kind] + reason


def kind_of(reason: str) -> str:
    """The kind a skip reason names; ``dependency`` when it names none."""
    reason = reason.removeprefix("Skipped: ")
    return next((k for k in ALLOWED if reason.startswith(PREFIX[k])), "dependency")


def requires(condition: object, reason: str, kind: Kind = "dependency") -> pytest.MarkDecorator:
    """``skipif(not condition)`` whose reason names ``kind``; GPU/TensorRT tests also need their marker."""
    return pytest.mark.skipif(not condition, reason=reason_for(reason, kind))


def skip(reason: str, kind: Kind = "dependency") -> NoReturn:
    """Skip from inside a test or fixture, naming ``kind``."""
    pytest.skip(reason_for(reason, kind))


def _skip_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _unmarked(item: pytest.Item) -> list[str]:
    """Skip marks of a GPU/TensorRT kind on a test that lacks that marker."""
    bad = []
    for mark in [*item.iter_markers("skipif"), *item.iter_markers("skip")]:
        kind = kind_of(str(mark.kwargs.get("reason", "")))
        if kind in ALLOWED and item.get_closest_marker(kind) is None:
            bad.append(f"skips for {kind} ({mark.kwargs['reason']!r}) but is not marked @pytest.mark.{kind}")
    return bad


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Checked on every machine, whether or not the skip applies here (a GPU machine runs the test).
    for item in items:
        item.stash[_PROBLEMS] = _unmarked(item)


_PROBLEMS = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    problems = list(item.stash.get(_PROBLEMS, []))
    if problems and call.when == "setup":
        rep.outcome, rep.longrepr = "failed", f"{item.nodeid}: " + "; ".join(problems)
        return rep
    if rep.skipped and not hasattr(rep, "wasxfail"):
        reason = _skip_reason(rep.longrepr)
        kind = kind_of(reason)
        if isinstance(rep.longrepr, tuple) and rep.longrepr[0] == __file__:  # raised by skip() here: show the test instead
            path, line, _ = item.reportinfo()
            rep.longrepr = (str(path), (line or 0) + 1, reason)
        if kind in ALLOWED and item.get_closest_marker(kind) is None:
            rep.outcome = "failed"
            rep.longrepr = f"{item.nodeid}: skipped for {kind} ({reason}) but is not marked @pytest.mark.{kind}"
        elif kind not in ALLOWED and strict():
            rep.outcome = "failed"
            rep.longrepr = (f"{item.nodeid}: RN_DEPLOY_STRICT=1 forbids this skip ({reason}): only 'no GPU' and "
                            "'no full TensorRT' may skip; .ci/run installs every other dependency, so this is breakage")
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    rep = yield
    if rep.skipped and strict():
        reason = _skip_reason(rep.longrepr)
        if kind_of(reason) not in ALLOWED:
            rep.outcome = "failed"
            rep.longrepr = f"{collector.nodeid}: RN_DEPLOY_STRICT=1 forbids skipping a whole module ({reason})"
    return rep

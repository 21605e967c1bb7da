"""JSON that every parser reads: the one encoder behind each ``--json`` output.

Python's :func:`json.dumps` writes ``NaN``, ``Infinity`` and ``-Infinity`` for non-finite floats,
which strict parsers (``JSON.parse``, ``jq``, Go, Rust's serde) reject. Here a non-finite number
becomes ``null`` (an accuracy that was never measured, a latency that was never timed), and
values JSON has no type for (paths, dataclasses' odd fields) become strings.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, TextIO, cast


def to_strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, recursively (dicts, lists, tuples)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: to_strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_strict(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text: ``allow_nan=False`` after :func:`to_strict`, so a NaN can never slip through."""
    return json.dumps(to_strict(obj), indent=indent, allow_nan=False, default=str)


_document: TextIO | None = None  # the real stdout while :func:`json_stdout` holds it


def print_json(obj: Any, indent: int | None = 2) -> None:
    """Print ``obj`` as strict JSON: the one document a ``--json`` command writes on stdout."""
    out = _document or sys.stdout
    out.write(dumps(obj, indent=indent) + "\n")
    out.flush()


@contextlib.contextmanager
def json_stdout() -> Iterator[None]:
    """While a ``--json`` command works, everything but :func:`print_json` goes to stderr.

    Library logs (ModelOpt's logging, the TensorRT logger in C++, any ``print``) are written to
    stdout at the file-descriptor level too: fd 1 points at stderr meanwhile, and C stdio buffers
    are flushed before it is restored. Where stdout is no file (click's CliRunner) only
    ``sys.stdout`` is swapped.
    """
    global _document
    sys.stdout.flush()
    saved = sys.stdout
    try:
        fd: int | None = saved.fileno()
        err_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        fd = None
    keep = None
    if fd is not None:
        keep = os.dup(fd)
        os.dup2(err_fd, fd)
        _document = open(keep, "w", encoding=getattr(saved, "encoding", None) or "utf-8", closefd=False)
    else:
        _document = saved
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved
        if keep is not None and fd is not None:
            with contextlib.suppress(Exception):
                ctypes.CDLL(None).fflush(None)  # C/C++ output buffered while fd 1 was stderr goes there
            _document.flush()
            _document.close()
            os.dup2(keep, fd)
            os.close(keep)
        _document = None


def loads_strict(text: str) -> Any:
    """Parse ``text`` as strict JSON, refusing ``NaN``/``Infinity`` (for tests and clients)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


class ToDict:
    """Dataclass mixin: ``to_dict()`` is ``dataclasses.asdict(self)``, the form ``--json`` prints."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast(Any, self))

"""JSON that every parser reads: the one encoder behind each ``--json`` output.

Python's :func:`json.dumps` writes ``NaN``, ``Infinity`` and ``-Infinity`` for non-finite floats,
which strict parsers (``JSON.parse``, ``jq``, Go, Rust's serde) reject. Here a non-finite number
becomes ``null`` (an accuracy that was never measured, a latency that was never timed), and
values JSON has no type for (paths, dataclasses' odd fields) become strings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any, cast


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


def loads_strict(text: str) -> Any:
    """Parse ``text`` as strict JSON, refusing ``NaN``/``Infinity`` (for tests and clients)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


class ToDict:
    """Dataclass mixin: ``to_dict()`` is ``dataclasses.asdict(self)``, the form ``--json`` prints."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast(Any, self))

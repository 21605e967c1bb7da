"""The one progress-log type: a callable taking one line of text (``print``, ``click.echo``, a list's ``append``)."""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]

"""HTTP/1.1 message heads: the start line, the header fields, the body's Content-Length (for the body guard and loadtest's client)."""

from __future__ import annotations


def parse_head(head: bytes) -> tuple[str, dict[str, list[str]]]:
    """The first line and the header fields of an HTTP head (up to its blank line): lower-case names, every value in
    order (repeated fields are kept). ValueError naming the line when one is not a header field."""
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"malformed header line {line[:60]!r}")
        fields.setdefault(name.lower(), []).append(value.strip())
    return lines[0], fields


def content_length(fields: dict[str, list[str]]) -> int | None:
    """The body's length from Content-Length (None without one); ValueError when its values differ or are not digits."""
    values = set(fields.get("content-length", []))
    if not values:
        return None
    if len(values) > 1 or not next(iter(values)).isdigit():
        raise ValueError("invalid Content-Length")
    return int(next(iter(values)))


def status(line: str) -> tuple[int, str]:
    """The code and reason of an answer's status line (``HTTP/1.1 200 OK``); ValueError when it is not one."""
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {line[:80]!r}")
    return int(parts[1]), parts[2] if len(parts) > 2 else ""

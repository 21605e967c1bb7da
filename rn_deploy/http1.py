"""HTTP/1.1 message heads: the start line, the header fields, the body's Content-Length (for the body guard and loadtest's client)."""

from __future__ import annotations


def parse_head(head: bytes, *, lenient: bool = False) -> tuple[str, dict[str, list[str]]]:
    """The first line and the header fields of an HTTP head (up to its blank line): lower-case names, every value in
    order (repeated fields are kept).

    Strict (the body guard, which forwards what it parses): a line that is not ``name: value``, or a bare CR, LF or
    NUL anywhere (another parser could split there and read a header the guard never saw), is a ValueError naming
    the line. ``lenient`` (loadtest reading answers, as RFC 9112 asks of a user agent): a folded line continues the
    field before it, spaces around a name are dropped, other lines without a colon are skipped; it never raises."""
    lines = head.decode("latin-1").split("\r\n")
    if not lenient:
        for line in lines:
            if "\r" in line or "\n" in line or "\0" in line:
                raise ValueError(f"bare CR, LF or NUL in the line {line[:60]!r}")
    fields: dict[str, list[str]] = {}
    last = ""
    for line in lines[1:]:
        if not line:
            continue
        if lenient and line[0] in " \t" and last:
            fields[last][-1] = f"{fields[last][-1]} {line.strip()}".strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip() if lenient else name
        if not sep or not name or name != name.strip():
            if lenient:
                continue
            raise ValueError(f"malformed header line {line[:60]!r}")
        last = name.lower()
        fields.setdefault(last, []).append(value.strip())
    return lines[0], fields


def content_length(fields: dict[str, list[str]]) -> int | None:
    """The body's length from Content-Length (None without one); ValueError when its values differ or are not digits."""
    values = set(fields.get("content-length", []))
    if not values:
        return None
    value = next(iter(values))
    if len(values) > 1 or not (value.isascii() and value.isdigit()):
        raise ValueError("invalid Content-Length")
    return int(value)


def status(line: str) -> tuple[int, str]:
    """The code and reason of an answer's status line (``HTTP/1.1 200 OK``); ValueError when it is not one."""
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (len(parts[1]) == 3 and parts[1].isascii()
                                                                  and parts[1].isdigit()):
        raise ValueError(f"not an HTTP answer: {line[:80]!r}")
    return int(parts[1]), parts[2] if len(parts) > 2 else ""

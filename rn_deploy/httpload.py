"""A lean HTTP/1.1 inference client for the load test: prebuilt requests on keep-alive asyncio connections.

tritonclient's ``aio`` HTTP client (aiohttp) spends ~0.65-0.75 ms of client time per request on a 2-core
machine: building the JSON header and the tensor, aiohttp's request machinery, parsing the answer into
numpy. At concurrency 1 that alone held ``rn-deploy loadtest`` 14% below perf_analyzer (issue 33). Here
each image's whole request (request line, headers and body) is built once, before the window
(:func:`infer_request`), and a sender's work per request is one ``write`` and reading the answer.

The body is Triton's binary tensor extension of KServe v2: a JSON header

    {"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","parameters":{"binary_data_size":N}}],
     "outputs":[{"name":"label","parameters":{"binary_data":true}}, ...]}

whose length goes in the ``Inference-Header-Content-Length`` header, followed by the tensor's raw bytes:
for one BYTES element, its 4-byte little-endian length and the encoded image (N = 4 + len(image)).

:class:`Connection` reads the status line, the headers and a ``Content-Length`` (or chunked) body; it
reconnects after ``Connection: close`` and, once, when a reused connection was closed by the server
before it answered. A non-200 raises :class:`HttpInferError` with the server's one-line message; a 200
must carry every requested output (its JSON header is parsed, and the binary parts' sizes must add up to
the rest of the body).
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from collections.abc import Sequence

from .http1 import content_length, parse_head, status

HEADER_LENGTH = "Inference-Header-Content-Length"


class HttpInferError(Exception):
    """A failed inference request: the server's message (non-200), or a malformed or incomplete answer."""

    def message(self) -> str:  # the interface rn_deploy.client.server_message reads (as tritonclient's exceptions)
        return str(self.args[0]) if self.args else ""


def split_address(url: str) -> tuple[str, int]:
    """``host:port`` (an ``http://`` prefix, a trailing slash and ``[v6]:port`` accepted; no port: 80) as (host, port)."""
    hp = re.sub(r"^[a-z]+://", "", url).rstrip("/")
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", hp)
    if not m:
        raise ValueError(f"not a host:port address: {url!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return host, int(port) if port else 80


def infer_body(image_input: str, data: bytes, outputs: Sequence[str]) -> tuple[bytes, int]:
    """The body of one request carrying ``data`` as a [1, 1] BYTES tensor, and the length of its JSON header."""
    tensor = struct.pack("<I", len(data)) + data
    header = json.dumps({"inputs": [{"name": image_input, "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(tensor)}}],
                         "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs]},
                        separators=(",", ":")).encode()
    return header + tensor, len(header)


def infer_request(host: str, port: int, model: str, image_input: str, data: bytes, outputs: Sequence[str]) -> bytes:
    """The whole HTTP/1.1 request (``POST /v2/models/MODEL/infer``, keep-alive) for one image, ready to write."""
    body, header_len = infer_body(image_input, data, outputs)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/octet-stream\r\n"
            f"{HEADER_LENGTH}: {header_len}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _one_line(text: str) -> str:
    lines = [s.strip() for s in text.strip().splitlines() if s.strip()]
    return lines[0] if lines else ""


def error_message(status: int, reason: str, body: bytes) -> str:
    """The server's message of a non-200 answer, one line: Triton's ``{"error": "..."}``, else the body's first line."""
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            text = doc["error"]
    except ValueError:
        pass
    return _one_line(text) or f"HTTP {status} {reason}".strip()


def check_outputs(headers: dict[str, str], body: bytes, outputs: Sequence[str]) -> None:
    """A 200's body must name every output in ``outputs`` and its binary parts must fill the rest of the body."""
    n = int(headers.get(HEADER_LENGTH.lower(), len(body)))
    try:
        doc = json.loads(body[:n])
        got = {o["name"]: int(o.get("parameters", {}).get("binary_data_size", 0)) for o in doc["outputs"]}
    except (ValueError, KeyError, TypeError) as e:
        raise HttpInferError(f"unreadable answer from the server ({type(e).__name__}: {e})") from None
    missing = [o for o in outputs if o not in got]
    if missing:
        raise HttpInferError(f"the server's answer lacks output(s) {', '.join(missing)}")
    if sum(got.values()) != len(body) - n:
        raise HttpInferError(f"the server's answer has {len(body) - n} binary bytes, its header declares {sum(got.values())}")


class Connection:
    """One keep-alive HTTP/1.1 connection; :meth:`infer` sends a prebuilt request and checks the answer."""

    def __init__(self, host: str, port: int, outputs: Sequence[str]):
        self.host, self.port, self.outputs = host, port, tuple(outputs)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connects = 0  # how many times it (re)connected: one per sender unless the server closes

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.connects += 1

    async def close(self) -> None:
        w, self.reader, self.writer = self.writer, None, None
        if w is not None:
            w.close()
            try:
                await w.wait_closed()
            except OSError:
                pass

    async def infer(self, request: bytes) -> None:
        """Send ``request`` (from :func:`infer_request`); raise :class:`HttpInferError` unless a 200 with the outputs."""
        reused = self.writer is not None
        try:
            if not reused:
                await self._connect()
            try:
                status, reason, headers, body = await self._exchange(request)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                # A kept-alive connection the server closed while idle (nothing of an answer read): once more, afresh.
                if not reused or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                    raise
                await self.close()
                await self._connect()
                status, reason, headers, body = await self._exchange(request)
        except (asyncio.IncompleteReadError, OSError) as e:
            await self.close()
            raise HttpInferError(f"connection to {self.host}:{self.port} failed ({type(e).__name__}: {e})") from None
        except (asyncio.LimitOverrunError, ValueError) as e:
            await self.close()
            raise HttpInferError(f"malformed answer from the server ({type(e).__name__}: {e})") from None
        if headers.get("connection", "").lower() == "close":
            await self.close()
        if status != 200:
            raise HttpInferError(error_message(status, reason, body))
        check_outputs(headers, body, self.outputs)

    async def _exchange(self, request: bytes) -> tuple[int, str, dict[str, str], bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        line, fields = parse_head(head, lenient=True)
        code, reason = status(line)  # ValueError (a malformed answer) when it is not an HTTP answer
        length = content_length(fields)
        headers = {name: values[-1] for name, values in fields.items()}
        if line.startswith("HTTP/1.0 ") and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        if length is not None:
            body = await self.reader.readexactly(length)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            body = b"".join(chunks)
        else:  # no length: the body runs to the end of the connection
            body = await self.reader.read()
            headers["connection"] = "close"
        return code, reason, headers, body

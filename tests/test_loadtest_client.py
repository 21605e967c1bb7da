"""loadtest's raw HTTP client (rn_deploy/httpload.py) against a stub server written here, and its verdict's arithmetic.

The stub is an independent reading of Triton's binary tensor extension: it finds where the request's JSON
header ends by decoding the JSON itself (not by trusting ``Inference-Header-Content-Length``), checks the
BYTES element's 4-byte little-endian length prefix against the bytes that follow, and answers from a script:
200s with the four outputs, a 400 with Triton's ``{"error": ...}``, ``Connection: close`` (after which it keeps
the socket open and flags any further request on it), a silent close of an idle keep-alive connection,
a chunked answer, and malformed 200s. The real server is tests/test_serve.py's.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from rn_deploy.client import server_message
from rn_deploy.httpload import Connection, HttpInferError, infer_body, infer_request, split_address
from rn_deploy.loadlevel import CLIENT_SHARE, LoadLevel
from rn_deploy.loadtest import LoadReport, markdown, run_level
from rn_deploy.serverstats import LatencySplit

OUTPUTS = ("label", "index", "score", "probs")
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3  # any bytes: the stub does not decode them


def ok_body(names: tuple[str, ...] = OUTPUTS, extra: int = 0) -> tuple[bytes, int]:
    parts = {"label": struct.pack("<I", 5) + b"Shirt", "index": struct.pack("<i", 6), "score": struct.pack("<f", 0.9),
             "probs": struct.pack("<10f", *([0.01] * 9 + [0.91]))}
    header = json.dumps({"model_name": "classifier", "outputs": [
        {"name": n, "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": len(parts[n])}} for n in names]}).encode()
    return header + b"".join(parts[n] for n in names) + b"\x00" * extra, len(header)


@dataclass
class Stub:
    script: list[str]  # one action per inference request, in arrival order; then "ok"
    port: int = 0
    connections: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn, closed_by_us = self.connections, False
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                line, *rest = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                method, path, _ = line.split(" ")
                if not path.endswith("/infer"):  # statistics, config: this stub has none
                    writer.write(b'HTTP/1.1 404 Not Found\r\nContent-Length: 21\r\n\r\n{"error":"not here"}\n')
                    continue
                if closed_by_us:
                    self.violations.append("a request on a connection the server had answered with Connection: close")
                    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
                    continue
                self.check(conn, method, path, headers, body)
                action = self.script.pop(0) if self.script else "ok"
                if action == "drop":  # answered, then closed as an idle keep-alive connection would be
                    payload, n = ok_body()
                    writer.write(self.answer(200, payload, n))
                    await writer.drain()
                    return
                if action == "400":
                    msg = json.dumps({"error": "image 0: not a PNG or JPEG image\ntraceback line"}).encode()
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                                 + f"Content-Length: {len(msg)}\r\n\r\n".encode() + msg)
                elif action == "close":
                    payload, n = ok_body()
                    writer.write(self.answer(200, payload, n, b"Connection: close\r\n"))
                    closed_by_us = True  # kept open on purpose: a client that ignores the header sends here again
                elif action == "chunked":
                    payload, n = ok_body()
                    chunks = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (payload[:7], payload[7:]))
                    writer.write(f"HTTP/1.1 200 OK\r\nInference-Header-Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 .encode() + chunks + b"0\r\n\r\n")
                elif action == "folded":  # a proxy's answer with an obs-folded field and a space before a colon
                    payload, n = ok_body()
                    writer.write(self.answer(200, payload, n, b"X-Note: one\r\n two\r\nVia : proxy\r\n"))
                elif action == "garbage":  # not HTTP at all
                    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
                elif action == "missing":
                    payload, n = ok_body(OUTPUTS[:3])
                    writer.write(self.answer(200, payload, n))
                elif action == "sizes":
                    payload, n = ok_body(extra=3)
                    writer.write(self.answer(200, payload, n))
                else:
                    payload, n = ok_body()
                    writer.write(self.answer(200, payload, n))
                await writer.drain()
        finally:
            writer.close()

    @staticmethod
    def answer(status: int, payload: bytes, header_len: int, extra: bytes = b"") -> bytes:
        return (f"HTTP/1.1 {status} OK\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: {header_len}\r\n"
                f"Content-Length: {len(payload)}\r\n".encode() + extra + b"\r\n" + payload)

    def check(self, conn: int, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """Triton's binary extension, read independently: the JSON's own end, the BYTES element's length prefix."""
        doc, end = json.JSONDecoder().raw_decode(body.decode("latin-1"))
        (size,) = struct.unpack("<I", body[end:end + 4])
        self.requests.append({"conn": conn, "method": method, "path": path, "host": headers.get("host"), "json": doc, "json_end": end,
                              "header_length": int(headers.get("inference-header-content-length", -1)),
                              "prefix": size, "element": body[end + 4:], "binary": len(body) - end})


@contextmanager
def stub(*script: str) -> Iterator[Stub]:
    st = Stub(list(script))
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(st.handle, "127.0.0.1", 0))
        st.port = server.sockets[0].getsockname()[1]
        started.set()
        loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(loop)
        for t in tasks:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield st
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def exchange(st: Stub, n: int) -> tuple[list[str | None], int]:
    """``n`` requests on one Connection: each one's error (None: ok) and how many times it connected."""
    async def go() -> tuple[list[str | None], int]:
        conn = Connection("127.0.0.1", st.port, OUTPUTS)
        req = infer_request("127.0.0.1", st.port, "classifier", "image", IMAGE, OUTPUTS)
        out: list[str | None] = []
        try:
            for _ in range(n):
                try:
                    await asyncio.wait_for(conn.infer(req), 10)
                    out.append(None)
                except HttpInferError as e:
                    out.append(server_message(e))
            return out, conn.connects
        finally:
            await conn.close()

    return asyncio.run(go())


def test_request_bytes_are_tritons_binary_extension_read_independently() -> None:
    with stub() as st:
        errors, connects = exchange(st, 1)
    assert errors == [None] and connects == 1 and not st.violations
    (r,) = st.requests
    assert r["method"] == "POST" and r["path"] == "/v2/models/classifier/infer" and r["host"] == f"127.0.0.1:{st.port}"
    assert r["header_length"] == r["json_end"]  # Inference-Header-Content-Length is the JSON header's own length
    assert r["prefix"] == len(IMAGE) and r["element"] == IMAGE  # one BYTES element: LE length, then the image
    (inp,) = r["json"]["inputs"]
    assert inp == {"name": "image", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(IMAGE)}}
    assert r["binary"] == 4 + len(IMAGE)
    assert [(o["name"], o["parameters"]["binary_data"]) for o in r["json"]["outputs"]] == [(n, True) for n in OUTPUTS]


def test_infer_body_matches_tritonclient_http() -> None:
    """The same tensor bytes tritonclient's own HTTP client sends (its JSON header differs only in spacing)."""
    import numpy as np
    import tritonclient.http as th
    from tritonclient.http._utils import _get_inference_request

    inp = th.InferInput("image", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[IMAGE]], dtype=object))
    theirs, their_len = _get_inference_request(inputs=[inp], request_id="", outputs=[th.InferRequestedOutput(n) for n in OUTPUTS],
                                               sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                               custom_parameters=None)
    ours, our_len = infer_body("image", IMAGE, OUTPUTS)
    assert ours[our_len:] == theirs[their_len:]
    assert json.loads(ours[:our_len]) == json.loads(theirs[:their_len])


def test_one_connection_is_kept_alive_across_requests() -> None:
    with stub() as st:
        errors, connects = exchange(st, 5)
    assert errors == [None] * 5 and connects == 1 and st.connections == 1 and len(st.requests) == 5


def test_connection_close_is_honoured_and_the_next_request_reconnects() -> None:
    with stub("ok", "close", "ok", "close", "ok") as st:
        errors, connects = exchange(st, 5)
    assert not st.violations, st.violations
    assert errors == [None] * 5 and connects == 3 and st.connections == 3


def test_a_kept_alive_connection_the_server_dropped_is_retried_once_on_a_new_one() -> None:
    with stub("drop", "ok", "drop") as st:
        errors, connects = exchange(st, 4)
    assert errors == [None] * 4 and connects == 3 and len(st.requests) == 4


def test_non_200_is_one_error_with_the_servers_line_and_the_connection_stays_usable() -> None:
    with stub("400", "ok") as st:
        errors, connects = exchange(st, 2)
    assert errors == ["image 0: not a PNG or JPEG image", None] and connects == 1


def test_a_200_must_carry_every_output_and_consistent_sizes() -> None:
    with stub("missing", "sizes", "chunked") as st:
        errors, _ = exchange(st, 3)
    assert errors[0] == "the server's answer lacks output(s) probs"
    assert errors[1] is not None and "binary bytes" in errors[1]
    assert errors[2] is None  # a chunked 200 is read whole


def test_a_folded_answer_is_read_and_a_non_http_one_is_a_malformed_answer_then_a_new_connection() -> None:
    with stub("folded", "garbage", "ok") as st:
        errors, connects = exchange(st, 3)
    assert errors[0] is None
    assert errors[1] is not None and "malformed answer" in errors[1] and "not an HTTP answer: 'SSH-2.0" in errors[1]
    assert errors[2] is None and connects == 2


def test_nothing_listening_is_an_error_not_a_hang() -> None:
    with stub() as st:
        port = st.port
    errors, _ = exchange(Stub([], port=port), 1)
    assert errors[0] is not None and "failed" in errors[0]


def test_run_level_over_http_counts_requests_and_errors_from_the_stub() -> None:
    """The whole level against the stub: no statistics there (no split, an honest 'unknown'), one 400 in the window."""
    with stub("ok", "ok", "400") as st:
        lv = run_level(f"http://127.0.0.1:{st.port}/", "classifier", [IMAGE, IMAGE[:100]], 2, 0.3, False)
    assert not st.violations and len({r["conn"] for r in st.requests}) == 2  # one keep-alive connection per sender
    assert lv.errors == 1 and lv.first_error == "image 0: not a PNG or JPEG image" and lv.requests > 0
    assert len(st.requests) == lv.requests + lv.errors + 2  # every request the stub read is counted, + the 2 warm-ups
    # No statistics: never "the server set the pace". (The stub runs in this process, so its CPU is the client's too.)
    assert lv.split is None and lv.client_share is None and not lv.verdict.startswith("the server set the pace")
    assert lv.verdict.startswith("the client was the bottleneck" if lv.client_bound or lv.client_starved else "who set the pace is unknown")


def test_split_address() -> None:
    assert split_address("http://127.0.0.1:8000/") == ("127.0.0.1", 8000)
    assert split_address("localhost") == ("localhost", 80)
    assert split_address("[::1]:8001") == ("::1", 8001)


# --- the verdict's arithmetic on constructed levels --------------------------------------------------------------

def level(mean: float, client: float, busy: float | None, rps: float = 170.0, cpu: float = 0.14, **kw: Any) -> LoadLevel:
    s = LatencySplit(1000, mean - client, 0.1, 0.1, mean - client - 0.4, 0.1, 0.1, client, 1.0, busy)
    lv = LoadLevel(1, 1000, 0, 5.0, rps, mean, mean, mean, client_cpu=cpu, mean_ms=mean, split=s, **kw)
    lv.assess()
    return lv


def test_verdict_says_the_client_held_the_rate_back_and_by_how_much() -> None:
    lv = level(5.0, 0.7, 0.5)  # the measured case: 0.7 ms of 5 ms at concurrency 1, the model half idle
    assert lv.client_share == pytest.approx(0.14) and lv.client_held
    assert lv.ceiling_x == pytest.approx(5.0 / 4.3, abs=1e-3)  # closed loop: rate x mean / (mean - client)
    assert lv.client_cpu_ms == pytest.approx(0.14 * 1e3 / 170, abs=1e-4)
    assert lv.own_ms == pytest.approx(0.7)  # its CPU per request (0.82 ms) is over the client side: capped by it
    assert lv.verdict == ("the client was the bottleneck: the load generator's own time was 0.70 ms of each 5.00 ms request (14%; "
                          "outside the server's statistics 0.70 ms: the client, the network stack, HTTP handling): with a "
                          "zero-overhead client this level could reach up to ~1.16x this rate (198 req/s), the model busy 50% "
                          "of the window")


def test_verdict_counts_the_load_generators_cpu_not_the_network_and_http_every_client_pays() -> None:
    """The measured case behind `own_ms`: 0.71 ms of each 6.16 ms request was outside the server's statistics, the
    load generator's CPU was 0.47 ms per request (162 req/s), and perf_analyzer's C++ client got the same rate
    within 3%: the server set the pace."""
    lv = level(6.16, 0.71, 0.54, rps=162.0, cpu=0.47 * 162 / 1e3)
    assert lv.own_ms == pytest.approx(0.47, abs=1e-3) and lv.client_share == pytest.approx(0.47 / 6.16, abs=1e-3)
    assert not lv.client_held and lv.verdict.startswith("the server set the pace (the load generator's own time was 0.47 ms")
    assert lv.ceiling_x == pytest.approx(6.16 / (6.16 - 0.47), abs=1e-3)


def test_verdict_ceiling_is_capped_by_the_models_free_time() -> None:
    lv = level(2.0, 1.0, 0.8)  # half of each request is the client's, but the model has only 25% more to give
    assert lv.client_held and lv.ceiling_x == pytest.approx(1.25)
    assert "up to ~1.25x this rate (212 req/s)" in lv.verdict


def test_verdict_server_when_saturated_or_the_client_share_is_small() -> None:
    busy = level(5.0, 0.7, 0.95)  # same client time, but the model was busy 95% of the window: the server set the pace
    assert not busy.client_held and busy.verdict.startswith("the server set the pace (the load generator's own time was 0.70 ms")
    small = level(5.0, 0.25, 0.5)
    assert small.client_share == pytest.approx(0.05) and small.client_share < CLIENT_SHARE and not small.client_held
    assert small.verdict.startswith("the server set the pace") and "(5%;" in small.verdict and "~1.05x" in small.verdict
    at = level(5.0, 0.5, 0.5)  # exactly CLIENT_SHARE: held
    assert at.client_held and at.verdict.startswith("the client was the bottleneck")


def test_verdict_keeps_the_client_bound_and_starved_cases_with_the_figures() -> None:
    bound = level(5.0, 0.7, 0.5, cpu=0.95, client_bound=True)
    assert bound.verdict.startswith("the client was the bottleneck: the load generator used 95% of a CPU core (>= 90%); "
                                    "the model was busy 50% of the window, so the server could answer up to ~2.0x")
    assert "0.70 ms of each 5.00 ms request (14%" in bound.verdict
    starved = level(5.0, 0.7, 0.5, loop_lag_ms=1.0, client_starved=True)
    assert starved.verdict.startswith("the client was the bottleneck: its event loop ran 1.00 ms late on average (20% of")


def test_verdict_without_statistics_is_unknown_and_markdown_flags_held_levels() -> None:
    lv = LoadLevel(1, 10, 0, 1.0, 10.0, 5.0, 5.0, 5.0, client_cpu=0.1, mean_ms=5.0)
    lv.assess()
    assert lv.client_share is None and not lv.client_held and lv.verdict.startswith("who set the pace is unknown")
    md = markdown(LoadReport("x:1", "m", "http", 1, "", 1.0, levels=[level(5.0, 0.7, 0.5)]))
    assert "| 14% (held the rate back) |" in md and "Client-bound levels" in md

"""The body guard in front of tritonserver (rn_deploy/serve/guard.py): bodies over --max-request-bytes refused at the
socket, before a byte of them is read, and bodies in flight bounded by --max-bytes-in-flight.

The HTTP half runs against an upstream written here (a few lines of asyncio that record the bytes they get and
answer when told): the independent answer for what reaches tritonserver. The real-server tests run `rn-deploy serve`
and watch its memory while oversized bodies arrive over HTTP and gRPC.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rn_deploy.serve.budget import BUSY, NOT_RUNNING, STOPPING
from rn_deploy.serve.guard import BodyGuard
from rn_deploy.serve.procfs import tree_pss_mb

from .conftest import free_ports


class Upstream:
    """An HTTP/1.1 server in a thread: records each request's head and body; answers it once ``release()`` is called
    (or at once when ``hold`` is False) with ``200`` and a body naming how many bytes it got."""

    def __init__(self, hold: bool = False):
        self.hold, self.received, self.gate = hold, [], threading.Semaphore(0)
        self.bytes_read = 0
        self.loop = asyncio.new_event_loop()
        self.port = free_ports(1)[0]
        ready = threading.Event()

        async def main() -> None:
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(main()), self.loop.run_forever()), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.bytes_read += len(head) + len(body)
                self.received.append((head, body))
                if self.hold:
                    await asyncio.get_running_loop().run_in_executor(None, self.gate.acquire)
                answer = f"got {len(body)}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()

    def close(self) -> None:
        self.hold = False
        self.release(100)  # no handler stays blocked in the executor (its threads would hold the interpreter's exit)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture()
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


def start_guard(upstream: Upstream, max_body: int, in_flight: int) -> BodyGuard:
    h, g, grpc_up = free_ports(3)
    guard = BodyGuard("127.0.0.1", h, g, upstream.port, grpc_up, max_body, in_flight)
    guard.start()
    return guard


def exchange(port: int, data: bytes, answers: int = 1, timeout: float = 10.0) -> list[bytes]:
    """Send ``data`` on one connection; the raw answers (status line + body), read until ``answers`` came or it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got, buf = [], b""
        while len(got) < answers:
            while b"\r\n\r\n" not in buf:
                piece = s.recv(65536)
                if not piece:
                    return got
                buf += piece
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:"))
            while len(buf) < length:
                piece = s.recv(65536)
                if not piece:
                    break
                buf += piece
            got.append(head.split(b"\r\n")[0] + b" " + buf[:length])
            buf = buf[length:]
        return got


def post(body: bytes, extra: str = "") -> bytes:
    return f"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_bodies_under_the_limit_pass_unchanged_on_one_kept_alive_connection(upstream: Upstream) -> None:
    guard = start_guard(upstream, 1000, 4000)
    try:
        reqs = [post(b"a" * 1000), post(b""), post(bytes(range(256)) * 3)]
        answers = exchange(guard.http_port, b"".join(reqs), answers=3)
        assert answers == [b"HTTP/1.1 200 OK got 1000", b"HTTP/1.1 200 OK got 0", b"HTTP/1.1 200 OK got 768"]
        assert [h + b for h, b in upstream.received] == reqs  # byte for byte what the client sent
    finally:
        guard.stop(0)


def test_a_body_over_the_limit_is_refused_with_413_from_its_head_alone_and_never_reaches_the_server(upstream: Upstream) -> None:
    guard = start_guard(upstream, 1000, 4000)
    try:
        # Only the head is sent: the answer must come without the body (the guard reads none of it).
        (answer,) = exchange(guard.http_port, b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"request body of 1001 bytes is over the server's --max-request-bytes 1000" in answer
        (answer,) = exchange(guard.http_port, post(b"x" * 5000))  # with the body sent: still the 413, no reset
        assert answer.startswith(b"HTTP/1.1 413 ")
        chunked = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        (answer,) = exchange(guard.http_port, chunked)
        assert answer.startswith(b"HTTP/1.1 411 ") and b"Content-Length" in answer
        assert upstream.received == [] and upstream.bytes_read == 0
    finally:
        guard.stop(0)


def test_a_head_with_a_bare_lf_is_a_400_and_never_reaches_the_server(upstream: Upstream) -> None:
    """A parser that splits at a bare LF (some do) would read a Content-Length the guard never checked."""
    guard = start_guard(upstream, 1000, 4000)
    try:
        smuggled = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nX-A: a\nContent-Length: 99999999\r\n\r\n"
        (answer,) = exchange(guard.http_port, smuggled)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"bare CR, LF or NUL" in answer, answer
        assert upstream.received == [] and upstream.bytes_read == 0
    finally:
        guard.stop(0)


def test_a_refusal_keeps_the_order_of_answers_on_its_connection(upstream: Upstream) -> None:
    """Pipelined: a good request, then an oversized one: the good one's answer first, then the 413, then close."""
    upstream.hold = True
    guard = start_guard(upstream, 1000, 4000)
    try:
        threading.Timer(0.5, upstream.release).start()  # the good answer comes late: the 413 must wait for it
        answers = exchange(guard.http_port, post(b"g" * 10) + post(b"x" * 2000) + post(b"never"), answers=3)
        assert answers[0] == b"HTTP/1.1 200 OK got 10" and answers[1].startswith(b"HTTP/1.1 413 ") and len(answers) == 2
        assert [b for _, b in upstream.received] == [b"g" * 10]
    finally:
        guard.stop(0)


def test_bodies_in_flight_stay_under_the_budget_later_ones_wait(upstream: Upstream) -> None:
    """Budget 150 kB, three clients with 100 kB bodies (over SMALL, so budgeted), answers held: one body reaches the
    server, the others wait unread until its answer frees the room; all three are answered in the end."""
    upstream.hold = True
    guard = start_guard(upstream, 300_000, 150_000)
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(exchange, guard.http_port, post(bytes([k]) * 100_000)) for k in range(3)]
            time.sleep(1.0)
            assert len(upstream.received) == 1  # the second would take 200 kB > 150 kB in flight
            for n in (2, 3):
                upstream.release()
                wait_for(lambda n=n: len(upstream.received) >= n)
                time.sleep(0.3)
                assert len(upstream.received) == n
            upstream.release()
            assert sorted(f.result(timeout=10)[0] for f in futures) == [b"HTTP/1.1 200 OK got 100000"] * 3
    finally:
        guard.stop(0)


def wait_for(cond, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - t0


def stall(port: int, length: int = 100_000, sent: int = 10) -> socket.socket:
    """A client that sends the head of a ``length``-byte body and ``sent`` bytes of it, then nothing."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode() + b"s" * sent)
    return s


def test_clients_stalling_large_bodies_hold_neither_small_requests_nor_the_room_for_long(upstream: Upstream) -> None:
    """Two clients that send a large body's head and stop (the whole budget of 100 kB: with the old guard, which took
    it before reading and counted small bodies too, every request with a body waited for ever): small requests pass at once, the stalled bodies give their
    room back after the idle time, and a client gone mid-body gives it back at once."""
    h, g, grpc_up = free_ports(3)
    guard = BodyGuard("127.0.0.1", h, g, upstream.port, grpc_up, 100_000, 100_000, idle_s=1.5)
    guard.start()
    try:
        stalled = [stall(h), stall(h)]
        assert exchange(h, post(b"small" * 100), timeout=5) == [b"HTTP/1.1 200 OK got 500"]
        with ThreadPoolExecutor(1) as pool:
            big = pool.submit(exchange, h, post(b"b" * 100_000), 1, 20)
            took = wait_for(lambda: any(len(b) == 100_000 and b[:1] == b"b" for _, b in upstream.received))
            assert 0.5 < took < 6, took  # waited for a stalled body's idle time, not for ever
            assert big.result(10) == [b"HTTP/1.1 200 OK got 100000"]
        assert all(s.recv(100) == b"" for s in stalled)  # closed by the guard
        gone = stall(h, sent=50_000)
        time.sleep(0.3)
        gone.close()  # mid-body: its room must come back at once, not after the idle time
        t0 = time.monotonic()
        assert exchange(h, post(b"c" * 100_000), timeout=10) == [b"HTTP/1.1 200 OK got 100000"]
        assert time.monotonic() - t0 < 1.0
    finally:
        guard.stop(0)


def test_connections_over_the_cap_get_a_503_and_the_others_still_work(upstream: Upstream) -> None:
    h, g, grpc_up = free_ports(3)
    guard = BodyGuard("127.0.0.1", h, g, upstream.port, grpc_up, 1000, 4000, max_connections=2)
    guard.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", h), timeout=10) for _ in range(2)]
        time.sleep(0.3)
        (answer,) = exchange(h, post(b"x"))
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
        idle[0].close()
        time.sleep(0.3)
        assert exchange(h, post(b"x")) == [b"HTTP/1.1 200 OK got 1"]
        idle[1].close()
    finally:
        guard.stop(0)


def test_grpc_errors_name_no_internal_address_and_a_full_budget_refuses_large_messages(upstream: Upstream) -> None:
    """tritonserver's gRPC port closed (starting, stopping): the client's line is the guard's, not grpc's
    'ipv4:127.0.0.1:PORT: Failed to connect'. A message over SMALL while the budget is held is refused at once
    (gRPC messages arrive whole: holding them while they wait grew the supervisor by 50 MB per caller)."""
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    h, g, grpc_up = free_ports(3)
    guard = BodyGuard("127.0.0.1", h, g, upstream.port, grpc_up, 100_000, 100_000)
    guard.start()
    c = tgrpc.InferenceServerClient(f"127.0.0.1:{g}")
    try:
        with pytest.raises(InferenceServerException) as ei:
            c.is_server_ready()
        assert ei.value.status() == "StatusCode.UNAVAILABLE" and ei.value.message() == NOT_RUNNING
        assert str(grpc_up) not in str(ei.value)
        held = stall(h, sent=1000)  # 100 kB of budget taken by a body still arriving
        time.sleep(0.3)
        inp = tgrpc.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"x" * 90_000]], dtype=object))
        with pytest.raises(InferenceServerException) as ei:
            c.infer("m", [inp])
        assert ei.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and ei.value.message() == BUSY
        held.close()
    finally:
        c.close()
        guard.stop(0)


def test_a_server_not_listening_is_a_503_not_a_hang(upstream: Upstream) -> None:
    upstream.close()
    time.sleep(0.2)
    h, g, up_h, up_g = free_ports(4)
    guard = BodyGuard("127.0.0.1", h, g, up_h, up_g, 1000, 4000)  # nothing listens on up_h
    guard.start()
    try:
        (answer,) = exchange(h, post(b"x"))
        assert answer.startswith(b"HTTP/1.1 503 ")
    finally:
        guard.stop(0)


def test_drain_answers_new_requests_and_waiting_bodies_503_stopping_and_forwarded_ones_are_answered(upstream: Upstream) -> None:
    """BodyGuard.drain (serve on SIGTERM): a body waiting for room gets 503 "stopping" at once (it waited up to 30 s
    for room and then saw its connection closed at exit), so does a new request on a kept-alive connection, and gRPC
    says UNAVAILABLE; the body already forwarded still gets its answer. Nothing new reaches the server."""
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    upstream.hold = True
    guard = start_guard(upstream, 300_000, 150_000)
    c = tgrpc.InferenceServerClient(f"127.0.0.1:{guard.grpc_port}")
    try:
        with socket.create_connection(("127.0.0.1", guard.http_port), timeout=10) as kept:
            with ThreadPoolExecutor(2) as pool:
                forwarded = pool.submit(exchange, guard.http_port, post(b"a" * 100_000))
                wait_for(lambda: len(upstream.received) == 1)
                waiting = pool.submit(exchange, guard.http_port, post(b"b" * 100_000))
                wait_for(lambda: guard.budget is not None and guard.budget.waiting == 1)  # 200 kB: over the 150 kB
                assert not waiting.done() and len(upstream.received) == 1
                t0 = time.monotonic()
                guard.drain()
                (answer,) = waiting.result(timeout=5)
                assert time.monotonic() - t0 < 2
                assert answer == b"HTTP/1.1 503 Service Unavailable " + json.dumps({"error": STOPPING}).encode()
                kept.sendall(post(b"c"))
                assert kept.recv(65536).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
                with pytest.raises(InferenceServerException) as ei:
                    c.is_server_ready()
                assert ei.value.status() == "StatusCode.UNAVAILABLE" and ei.value.message() == STOPPING
                assert not forwarded.done()
                upstream.release()
                assert forwarded.result(timeout=5) == [b"HTTP/1.1 200 OK got 100000"]
        assert len(upstream.received) == 1
    finally:
        c.close()
        guard.stop(0)


# --- the real server ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from .test_serve import start_server

    d = tmp_path_factory.mktemp("guard")
    model = _model(d)
    srv = start_server(model, d / "serve.log")
    try:
        yield srv
    finally:
        assert srv.stop() == 0


def _model(d: Path) -> Path:
    import torch

    from rn_deploy.checkpoint import ModelConfig, save_checkpoint
    from rn_deploy.export import export_onnx
    from rn_deploy.models import create_model

    torch.manual_seed(0)
    net = create_model("mnist_resnet", n_classes=10, in_channels=1)
    cfg = ModelConfig(arch="mnist_resnet", n_classes=10, in_channels=1, image_size=[28, 28], class_names=[str(i) for i in range(10)])
    save_checkpoint(d / "model.pt", net, cfg, {"note": "random test weights"})
    return Path(export_onnx(d / "model.pt", d / "model.onnx", verify=False).onnx_path)


def test_oversized_bodies_over_http_and_grpc_cost_the_server_no_memory(served) -> None:
    """Fifteen 80 MB bodies at once (five HTTP, ten gRPC; the default limit is 64 MiB). Ten took the server to
    +1.6-1.9 GB and left +0.5-0.7 GB when tritonserver received them. Refused at the socket they cost it 7-10 MB at
    the peak (sampled every 10 ms, three runs); over gRPC only with a 1 MiB stream window: with gRPC's
    bandwidth-delay probe on, each stream sent megabytes ahead of its refusal (+27-72 MB in three runs). The gRPC
    calls come from a process of their own (tests/grpc_burst.py says why)."""
    import os
    import subprocess
    import sys

    from rn_deploy.client import classify

    from .test_serve import REPO, png

    size = 80_000_000
    data = post(b"\x89PNG" + bytes(size - 4))
    http_port = int(served.http.rsplit(":", 1)[1])
    burst = subprocess.Popen([sys.executable, "-m", "tests.grpc_burst", served.grpc, "10", str(size)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert burst.stdout is not None and burst.stdout.readline() == "ready\n"
        base = tree_pss_mb(served.proc.pid)
        peak, done = [base], threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                peak[0] = max(peak[0], tree_pss_mb(served.proc.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(5) as pool:
                http_answers = [pool.submit(exchange, http_port, data, 1, 60) for _ in range(5)]
                grpc_answers = json.loads(burst.communicate("go\n", timeout=120)[0])
                http = [f.result(timeout=120)[0] for f in http_answers]
        finally:
            done.set()
            sampler.join()
    finally:
        burst.kill()
        burst.wait()
    assert all(a.startswith(b"HTTP/1.1 413 ") and b"--max-request-bytes 67108864" in a for a in http), http
    assert len(grpc_answers) == 10, grpc_answers
    assert all(r.startswith("StatusCode.RESOURCE_EXHAUSTED") and "larger than max (80000" in r for r in grpc_answers), grpc_answers
    assert peak[0] - base < 20, (base, peak[0])
    (ok,) = classify(served.http, [png(np.zeros((28, 28), np.uint8))])  # and the server still answers
    assert "error" not in ok, ok


def test_sigterm_answers_a_body_waiting_for_room_503_stopping_and_exits_0(tmp_path: Path) -> None:
    """The real server with a 150 kB budget: one client stalls a 100 kB body (its room taken), another's 100 kB body
    waits for room, and a gRPC stream is open. SIGTERM: the waiting body gets 503 "stopping" within seconds (it
    used to see its connection closed when the process exited), the stream's next request UNAVAILABLE "stopping",
    and serve still exits 0. (Whether the waiting body was still waiting or arrived after the drain, its answer is
    the same: the guard-level test above pins the waiting case; this one pins serve's wiring.)"""
    import queue

    import tritonclient.grpc as tgrpc

    from .test_serve import png, start_server

    srv = start_server(_model(tmp_path), tmp_path / "serve.log", "--max-request-bytes", "150000",
                       "--max-bytes-in-flight", "150000")
    port = int(srv.http.rsplit(":", 1)[1])
    answers: queue.Queue = queue.Queue()
    c = tgrpc.InferenceServerClient(srv.grpc)
    inp = tgrpc.InferInput("image", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[png(np.zeros((28, 28), np.uint8))]], dtype=object))
    try:
        c.start_stream(callback=lambda result, error: answers.put(error))
        c.async_stream_infer("classifier", [inp])
        assert answers.get(timeout=30) is None  # the stream works before SIGTERM
        held = stall(port, sent=1000)
        time.sleep(1.0)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(exchange, port, post(b"\x89PNG" + bytes(100_000)), 1, 30)
            time.sleep(1.5)
            assert not waiting.done()
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            got = waiting.result(timeout=30)
            took = time.monotonic() - t0
        assert got == [b"HTTP/1.1 503 Service Unavailable " + json.dumps({"error": STOPPING}).encode()], got
        assert took < 3, took
        c.async_stream_infer("classifier", [inp])
        error = answers.get(timeout=10)
        assert error is not None and error.status() == "StatusCode.UNAVAILABLE" and error.message() == STOPPING, error
        assert srv.proc.wait(30) == 0, srv.log.read_text()[-2000:]
        held.close()
    finally:
        c.stop_stream(cancel_requests=True)
        c.close()
        srv.stop()


def test_no_body_guard_leaves_the_ports_to_tritonserver_and_the_backend_still_refuses(tmp_path: Path) -> None:
    """--no-body-guard (behind a proxy that limits bodies): tritonserver reads the body, the backend's own check
    answers 400 (not the guard's 413), and nothing of the supervisor listens on the HTTP port."""
    from rn_deploy.client import classify

    from .test_serve import png, start_server

    srv = start_server(_model(tmp_path), tmp_path / "serve.log", "--no-body-guard", "--max-request-bytes", "100000",
                       "--max-bytes-in-flight", "100000")
    try:
        port = int(srv.http.rsplit(":", 1)[1])
        (answer,) = classify(srv.http, [b"\x89PNG" + bytes(200_000)])
        assert answer["error"].startswith("request of 200004 bytes is over the server's --max-request-bytes 100000"), answer
        (ok,) = classify(srv.http, [png(np.zeros((28, 28), np.uint8))])
        assert "error" not in ok, ok
        inodes = {str(p.readlink()) for p in Path(f"/proc/{srv.proc.pid}/fd").iterdir()}
        tcp = [ln.split() for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        http_listeners = {f"socket:[{f[9]}]" for f in tcp if f[3] == "0A" and int(f[1].split(":")[1], 16) == port}
        assert http_listeners and not (http_listeners & inodes)  # tritonserver, not the supervisor, holds the port
    finally:
        assert srv.stop() == 0

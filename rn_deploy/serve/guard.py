"""The body guard: ``serve``'s public HTTP and gRPC ports, refusing bodies over ``--max-request-bytes`` at the socket.

The tritonserver bundled with nvidia-pytriton 0.7.0 (2.51) has no request-size limit (no ``--http-max-input-size``;
its gRPC server takes messages up to 2 GiB): it receives a body whole and copies it into the Python backend's
shared-memory region before the model can look at it, and that region never shrinks (ten 80 MB bodies left
+0.5-0.7 GB; issue 32). So tritonserver listens on loopback ports of its own and this guard, in the supervisor,
takes the public ones:

- HTTP/1.1: reads each request's head (at most 64 KiB), refuses a ``Content-Length`` over the limit with 413 and a
  body without ``Content-Length`` (chunked) with 411, both before reading a byte of the body; forwards the rest
  unchanged on one upstream connection per client connection and relays the answers. A refusal waits for the
  connection's earlier answers (pipelining keeps its order), drops whatever body the client still sends (so it
  reads the answer instead of a reset), then closes the connection.
- gRPC (:mod:`.guard_grpc`): a proxy whose server refuses a message over the limit (``RESOURCE_EXHAUSTED``) as
  gRPC does, forwarding every other call, metadata included, to tritonserver's gRPC port.

Bodies over ``SMALL`` (64 KiB) also share a budget, ``--max-bytes-in-flight`` (:mod:`.budget`): an HTTP body that
would take the bytes forwarded and not yet answered over it waits, unread in the client's socket, until earlier
answers free room (503 after 30 s); a gRPC message, which arrives whole, is refused at once (``RESOURCE_EXHAUSTED``,
retry). So the shared-memory region, which keeps its high-water mark, stays under about that much whatever clients
send at once. A body alone over the budget still goes when nothing else is in flight; smaller bodies pass outside
it, bounded by the connection cap. No client holds anything for long: a connection without a request head for 60 s,
or a body that sends nothing for 60 s, is closed (a body's room comes back at once when its client goes); past
about half the process's descriptor limit (raised to its hard limit) new connections get 503.

Headers (the restricted-API token among them) pass through: tritonserver still decides what a client may call.
On SIGTERM (:meth:`BodyGuard.drain`) new requests and bodies still waiting for room get 503 / ``UNAVAILABLE``
"stopping" at once, while those already forwarded get their answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from typing import Any

from ..http1 import content_length, parse_head, status
from .budget import BUSY, NOT_RUNNING, SMALL, STOPPING, ByteBudget

HEAD_LIMIT = 64 << 10  # request and response heads; longer ones get 431 (tritonserver's answers are a few hundred bytes)
CHUNK = 1 << 20  # bodies go through in pieces of at most this: the guard never holds a body whole
IDLE_S = 60.0  # a connection with no request head for this long, or a body with no bytes for this long, is closed
BUDGET_WAIT_S = 30.0  # a large body waits at most this long for room in --max-bytes-in-flight, then gets 503
LINGER_IDLE_S, LINGER_MAX_S = 5.0, 30.0  # after a refusal, drop what the client still sends: until 5 s idle (nginx's lingering_timeout), 30 s at most
UPSTREAM_WAIT_S = 30.0  # how long a refusal waits for the connection's earlier answers


def _answer(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class HttpGuard:
    """The HTTP side: one asyncio server on the public address, forwarding to tritonserver's loopback port."""

    def __init__(self, upstream: tuple[str, int], max_body: int, budget: ByteBudget, max_connections: int,
                 idle_s: float = IDLE_S, stopping: asyncio.Event | None = None):
        self.upstream, self.max_body, self.budget = upstream, max_body, budget
        self.max_connections, self.connections, self.idle_s = max_connections, 0, idle_s
        self.stopping = stopping or asyncio.Event()  # set by BodyGuard.drain: new requests and waiting bodies get 503

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.max_connections:  # each one holds two descriptors (client, tritonserver) and a head
            with contextlib.suppress(OSError):
                writer.write(_answer(503, "Service Unavailable", "too many connections; retry"))
            writer.close()
            return
        self.connections += 1
        try:
            await self._serve(reader, writer)
        finally:
            self.connections -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        up_writer: asyncio.StreamWriter | None = None
        relay: asyncio.Task[None] | None = None
        pending: deque[int] = deque()  # budgeted bytes of the requests forwarded and not yet answered, oldest first
        answered = asyncio.Event()
        partial = False  # a request's body is being forwarded: if the client goes now, tritonserver can never answer it
        try:
            while True:
                timer = loop.call_later(self.idle_s, writer.transport.abort)  # idle keep-alive and slow heads end here
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed the connection between requests
                except asyncio.LimitOverrunError:
                    timer.cancel()
                    await self._refuse(writer, pending, answered, 431, "Request Header Fields Too Large",
                                       f"request head over {HEAD_LIMIT} bytes", reader)
                    return
                finally:
                    timer.cancel()
                try:
                    line, fields = parse_head(head)
                    length = content_length(fields)
                except ValueError as e:
                    await self._refuse(writer, pending, answered, 400, "Bad Request", f"bad request: {e}", reader)
                    return
                if self.stopping.is_set():
                    await self._refuse(writer, pending, answered, 503, "Service Unavailable", STOPPING, reader)
                    return
                if "transfer-encoding" in fields:
                    await self._refuse(writer, pending, answered, 411, "Length Required",
                                       "send the request body with a Content-Length (chunked bodies are not taken)", reader)
                    return
                if length is not None and length > self.max_body:
                    await self._refuse(writer, pending, answered, 413, "Content Too Large",
                                       f"request body of {length} bytes is over the server's --max-request-bytes "
                                       f"{self.max_body}; send smaller images", reader)
                    return
                if relay is not None and relay.done():
                    return  # tritonserver closed this connection (the relay closed the client's too)
                if up_writer is None:
                    try:
                        up_reader, up_writer = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT)
                    except OSError:
                        await self._refuse(writer, pending, answered, 503, "Service Unavailable", NOT_RUNNING, reader)
                        return
                    relay = asyncio.ensure_future(self._relay(up_reader, writer, pending, answered))
                remaining = length or 0
                # Small bodies (a request head's worth) pass without the budget: the connection cap bounds them. A
                # large one waits for room, unread in the client's socket, and holds it only while its bytes flow.
                taken = remaining if remaining > SMALL else 0
                if taken and not self.budget.fits(taken):
                    if not await self._room(taken):
                        await self._refuse(writer, pending, answered, 503, "Service Unavailable",
                                           STOPPING if self.stopping.is_set() else BUSY, reader)
                        return
                elif taken:
                    await self.budget.take(taken)
                pending.append(taken)
                partial = True
                if remaining <= SMALL and "expect" not in fields:  # one write: one segment for tritonserver to read
                    timer = loop.call_later(self.idle_s, writer.transport.abort)
                    try:
                        head, remaining = head + await reader.readexactly(remaining), 0
                    finally:
                        timer.cancel()
                up_writer.write(head)
                while remaining:
                    timer = loop.call_later(self.idle_s, writer.transport.abort)  # a body that stops flowing gives its room back
                    try:
                        piece = await reader.read(min(remaining, CHUNK))
                    finally:
                        timer.cancel()
                    if not piece:
                        return  # the client went away mid-body
                    remaining -= len(piece)
                    up_writer.write(piece)
                    await up_writer.drain()
                partial = False
                await up_writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            if partial and up_writer is not None:  # drop the half request at tritonserver and its room at once
                up_writer.transport.abort()
            if relay is not None:
                if up_writer is not None and pending and not partial and not relay.done():
                    with contextlib.suppress(OSError, asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(relay), UPSTREAM_WAIT_S)  # answers the client waits for
                relay.cancel()
            self.budget.give(sum(pending))
            pending.clear()
            for w in (up_writer, writer):
                if w is not None:
                    w.close()

    async def _room(self, n: int) -> bool:
        """Wait for ``n`` bytes of the budget: True when taken; False, holding nothing, after ``BUDGET_WAIT_S`` or as
        soon as the server is stopping (a body still waiting then would never be answered)."""
        take = asyncio.ensure_future(self.budget.take(n))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait((take, stop), timeout=BUDGET_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._drop(take, n)
            raise
        finally:
            stop.cancel()
        if take.done() and not take.cancelled() and not self.stopping.is_set():
            return True
        self._drop(take, n)
        return False

    def _drop(self, take: asyncio.Future[None], n: int) -> None:
        if take.done() and not take.cancelled():
            self.budget.give(n)
        else:
            take.cancel()

    async def _refuse(self, writer: asyncio.StreamWriter, pending: deque[int], answered: asyncio.Event, status: int,
                      reason: str, message: str, reader: asyncio.StreamReader) -> None:
        """Answer ``status`` after the connection's earlier answers, then drop what the client still sends for a while."""
        deadline = asyncio.get_running_loop().time() + UPSTREAM_WAIT_S
        while pending and asyncio.get_running_loop().time() < deadline:
            answered.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(answered.wait(), 1.0)
        with contextlib.suppress(OSError):  # ENOTCONN from write_eof on a client already gone, resets
            writer.write(_answer(status, reason, message))
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            # A client still sending its body reads the answer only once it is done: closing now would reset the
            # connection under it (EPIPE instead of the 413). Drop what it sends until it stops (or LINGER_MAX_S).
            end = asyncio.get_running_loop().time() + LINGER_MAX_S
            while (left := end - asyncio.get_running_loop().time()) > 0:
                try:
                    if not await asyncio.wait_for(reader.read(CHUNK), min(left, LINGER_IDLE_S)):
                        break
                except asyncio.TimeoutError:
                    break

    async def _relay(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: deque[int],
                     answered: asyncio.Event) -> None:
        """tritonserver's answers to the client, one at a time (framed by their heads, so refusals keep their order)."""
        try:
            while True:
                try:
                    head = await up.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    break
                status_line, fields = parse_head(head)
                code = status(status_line)[0]
                length = content_length(fields)
                if length is not None and length <= SMALL:  # an answer: one write (one segment) to the client
                    head, length = head + await up.readexactly(length), 0
                writer.write(head)
                if 100 <= code < 200:
                    await writer.drain()
                    continue  # 100 Continue: the final answer follows
                if pending:
                    self.budget.give(pending.popleft())
                # framed by Content-Length whatever the method: tritonserver's HEAD answers carry their body too
                if length is not None:
                    while length:
                        piece = await up.read(min(length, CHUNK))
                        if not piece:
                            raise ConnectionError("tritonserver closed mid-answer")
                        length -= len(piece)
                        writer.write(piece)
                        await writer.drain()
                elif "chunked" in ",".join(fields.get("transfer-encoding", [])).lower():
                    await self._relay_chunked(up, writer)
                else:  # read to the end of the connection
                    while piece := await up.read(CHUNK):
                        writer.write(piece)
                        await writer.drain()
                    break
                await writer.drain()
                answered.set()
        except (ConnectionError, ValueError, IndexError):
            pass
        finally:
            self.budget.give(sum(pending))
            pending.clear()
            answered.set()
            writer.close()

    @staticmethod
    async def _relay_chunked(up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            size_line = await up.readuntil(b"\r\n")
            writer.write(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (trailer := await up.readuntil(b"\r\n")) != b"\r\n":
                    writer.write(trailer)
                writer.write(b"\r\n")
                return
            writer.write(await up.readexactly(size + 2))
            await writer.drain()


def _connection_cap() -> int:
    """Client connections the HTTP side takes at once: each holds two descriptors (client, tritonserver), so about half
    of this process's descriptor limit (raised to its hard limit first), leaving room for gRPC and the rest. Past it a
    client gets a 503 instead of the accept loop failing (and logging) on every new connection."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return max(32, (min(soft, 65536) - 512) // 4)


def _return_large_blocks() -> None:
    """glibc in this process (the supervisor): blocks of 1 MiB or more mmap'd, so bodies the guard held (gRPC messages
    arrive whole) go back to the system when freed; what tritonserver gets from ``serve``'s environment (MALLOC_ENV)."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 8 << 20)  # M_TRIM_THRESHOLD


class BodyGuard:
    """Both guards on one event loop in a thread of the supervisor: :meth:`start` binds the public ports, :meth:`stop`."""

    def __init__(self, host: str, http_port: int, grpc_port: int, upstream_http: int, upstream_grpc: int,
                 max_body: int, max_in_flight: int, *, max_connections: int | None = None, idle_s: float = IDLE_S):
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.upstream_http, self.upstream_grpc, self.max_body = upstream_http, upstream_grpc, max_body
        self.max_in_flight, self.max_connections, self.idle_s = max_in_flight, max_connections, idle_s
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rn-deploy-guard", daemon=True)
        self._http: asyncio.base_events.Server | None = None
        self._grpc: Any = None
        self._channel: Any = None
        self._stopping: asyncio.Event | None = None
        self.budget: ByteBudget | None = None  # the HTTP and gRPC sides' --max-bytes-in-flight, once started

    def start(self) -> None:
        """Bind both public ports (OSError when one is taken) and start forwarding."""
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        import grpc

        from .guard_grpc import grpc_server

        _return_large_blocks()
        self.budget = budget = ByteBudget(self.max_in_flight)  # HTTP and gRPC bodies: one shared-memory region takes both
        connections = self.max_connections or _connection_cap()
        self._stopping = asyncio.Event()
        guard = HttpGuard(("127.0.0.1", self.upstream_http), self.max_body, budget, connections, self.idle_s,
                          self._stopping)
        self._http = await asyncio.start_server(guard.handle, self.host, self.http_port, limit=HEAD_LIMIT,
                                                reuse_address=True, backlog=1024)
        unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.upstream_grpc}", options=unlimited)
        self._grpc = grpc_server(self._channel, budget, self.max_body, connections, self._stopping)
        host = f"[{self.host}]" if ":" in self.host else self.host
        if not self._grpc.add_insecure_port(f"{host}:{self.grpc_port}"):
            raise OSError(f"cannot listen on {host}:{self.grpc_port}")
        await self._grpc.start()

    def drain(self) -> None:
        """The server is stopping: from now on every new request, and every body still waiting for room in the
        budget, gets 503 (HTTP) or ``UNAVAILABLE`` (gRPC) saying so at once, instead of a closed connection when the
        process exits; requests already forwarded still get tritonserver's answers. Call before stopping it."""
        if self.thread.is_alive() and self._stopping is not None:
            self.loop.call_soon_threadsafe(self._stopping.set)

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop listening, give calls in flight ``grace_s``, close the upstream channel and the loop."""
        if not self.thread.is_alive():
            return

        async def _stop() -> None:
            if self._http is not None:
                self._http.close()
            if self._grpc is not None:
                await self._grpc.stop(grace_s)
            if self._channel is not None:
                await self._channel.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(grace_s + 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

"""The body guard's gRPC side (HTTP: :mod:`.guard`): every method of tritonserver's service forwarded as raw bytes.

Its server refuses a message over ``--max-request-bytes`` from the length prefix (``RESOURCE_EXHAUSTED``, gRPC's own
check). A message arrives whole in this process before a handler sees it, so one over ``SMALL`` that does not fit
in ``--max-bytes-in-flight`` is refused at once (``RESOURCE_EXHAUSTED``, retry) instead of being held while it
waits; the number of calls at once is capped too. tritonserver's errors pass through, except a failed connection to
it, whose detail would name its internal address.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from .budget import BUSY, NOT_RUNNING, SMALL, STOPPING, ByteBudget

# What a message refused for its size costs first: the bytes its stream may send before the refusal, its HTTP/2
# window. gRPC's bandwidth-delay probe grows that window to megabytes per stream; with the probe off a stream starts
# at 1 MiB (gRPC core may grant up to ~1 MiB more while a read is pending). tests/test_serve_guard.py's burst (five
# HTTP and ten gRPC 80 MB bodies, the server's PSS sampled every 10 ms; three runs each, 2026-12-07) peaked at
# +27-72 MB with the probe and +7-10 MB without. The price: one call sends at most its window per round trip (a
# bound: ~10 MB/s at 100 ms); large images from far away go faster over HTTP (docs/serving.md).
RECEIVE_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1 << 20)]


def grpc_server(channel: Any, budget: ByteBudget, max_body: int, max_calls: int, stopping: asyncio.Event) -> Any:
    """A ``grpc.aio`` server (no port yet) forwarding every call on ``channel``, with the limits above; once
    ``stopping`` is set, new calls get ``UNAVAILABLE`` (retry elsewhere)."""
    import grpc

    forward = _GrpcForward(channel, budget, stopping)

    class Generic(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            return forward.handler(details.method)

    server = grpc.aio.server(maximum_concurrent_rpcs=max_calls, options=[
        ("grpc.max_receive_message_length", max_body), ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0),
        *RECEIVE_WINDOW])
    server.add_generic_rpc_handlers((Generic(),))
    return server


class _GrpcForward:
    """A generic gRPC handler: every method of tritonserver's service, request and answer as raw bytes."""

    def __init__(self, channel: Any, budget: ByteBudget, stopping: asyncio.Event):
        self.channel, self.budget, self.stopping = channel, budget, stopping

    def handler(self, method: str) -> Any:
        import grpc

        if method.endswith("/ModelStreamInfer"):
            async def stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
                sizes: deque[int] = deque()  # one answer per request (the served model is not decoupled)
                if self.stopping.is_set():
                    await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)

                async def counted() -> AsyncIterator[bytes]:
                    async for request in requests:
                        if self.stopping.is_set():  # a stream open across SIGTERM: its later requests too
                            await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)
                        taken = len(request) if len(request) > SMALL else 0
                        if not self.budget.fits(taken):
                            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY)
                        self.budget.give(-taken)
                        sizes.append(taken)
                        yield request

                call = self.channel.stream_stream(method)(counted(), metadata=_metadata(context),
                                                          timeout=context.time_remaining())
                try:
                    async for answer in call:
                        if sizes:
                            self.budget.give(sizes.popleft())
                        yield answer
                except grpc.aio.AioRpcError as e:
                    await context.abort(*_status(e))
                finally:
                    self.budget.give(sum(sizes))
                    sizes.clear()
            return grpc.stream_stream_rpc_method_handler(stream)

        async def unary(request: bytes, context: Any) -> bytes:
            # A gRPC message is already whole in this process: one that does not fit is refused at once, not held.
            if self.stopping.is_set():
                await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)
            taken = len(request) if len(request) > SMALL else 0
            if not self.budget.fits(taken):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY)
            self.budget.give(-taken)
            try:
                answer: bytes = await self.channel.unary_unary(method)(request, metadata=_metadata(context),
                                                                        timeout=context.time_remaining())
                return answer
            except grpc.aio.AioRpcError as e:
                await context.abort(*_status(e))
                raise  # abort raises; this line is never reached
            finally:
                self.budget.give(taken)
        return grpc.unary_unary_rpc_method_handler(unary)


def _status(e: Any) -> tuple[Any, str]:
    """tritonserver's gRPC error for the client: as it is, except a failed connection to it (whose detail names the
    internal address), which becomes the same line HTTP clients get."""
    import grpc

    if e.code() == grpc.StatusCode.UNAVAILABLE:
        return e.code(), NOT_RUNNING
    return e.code(), e.details() or ""


def _metadata(context: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in context.invocation_metadata() or () if not k.startswith(":") and k != "user-agent")

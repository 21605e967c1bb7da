"""What the body guard's HTTP (:mod:`.guard`) and gRPC (:mod:`.guard_grpc`) sides share: the byte budget and its lines."""

from __future__ import annotations

import asyncio
from collections import deque

SMALL = 64 << 10  # a body up to this goes on in one write with its head, outside the budget (the connection cap bounds those)
BUSY = "the server is holding its --max-bytes-in-flight of request bodies; retry"
NOT_RUNNING = "the model server is not running (starting or stopping); retry"
STOPPING = "the server is stopping; retry (another replica, or this one once it is back)"


class ByteBudget:
    """Bytes forwarded and not yet answered, at most ``limit`` (or one body, when it alone is larger)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def take(self, n: int) -> None:
        while not self.fits(n):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        self.used += n

    @property
    def waiting(self) -> int:
        """Bodies waiting for room now."""
        return sum(not w.done() for w in self._waiters)

    def fits(self, n: int) -> bool:
        return not self.used or self.used + n <= self.limit

    def give(self, n: int) -> None:
        self.used -= n
        while self._waiters:  # every waiter checks again; few wait at once (each holds a large body)
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

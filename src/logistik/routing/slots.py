"""A gate that lets a fixed number of callers through at once, in arrival order."""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    """At most `size` holders at a time; a freed slot goes straight to the longest waiter.

    asyncio.Semaphore scans its waiters on every release, which costs more than a model call's
    own bookkeeping once thousands of events wait on one busy model: here a release is O(1).
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        # Each waiter with the time it began to wait.
        self._waiters: deque[tuple[asyncio.Future[None], float]] = deque()

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot (cancelled waits included until a release skips them)."""
        return len(self._waiters)

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiters.append((future, loop.time()))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed a slot just as the wait was cancelled: pass it on
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def oldest_wait_s(self, now: float) -> float:
        """How long the longest waiter has waited (`now` on the event loop's clock); 0 if none."""
        waiters = self._waiters
        while waiters and waiters[0][0].done():  # cancelled waits, skipped by releases anyway
            waiters.popleft()
        return now - waiters[0][1] if waiters else 0.0

    @property
    def free(self) -> bool:
        """Whether a caller would get a slot at once."""
        return self._free > 0 and not self._waiters

    async def acquire(self, timeout_s: float | None) -> bool:
        """Take a slot, waiting at most `timeout_s` (None: as long as it takes); False when none
        came in time."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self.__aenter__()
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        """Give back a slot taken with `acquire`."""
        self._release()

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            future, _ = waiters.popleft()
            if not future.done():  # a cancelled wait is skipped
                future.set_result(None)
                return
        self._free += 1

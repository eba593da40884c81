"""A gate that lets a fixed number of callers through at once, in arrival order."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from logistik.routing.sweep import NEVER, Sweep


class _Waiter:
    """One caller waiting for a slot."""

    __slots__ = ("ends_s", "future", "joined_s", "keep_waiting", "timeout_s")

    def __init__(
        self,
        future: asyncio.Future[bool],
        joined_s: float,
        timeout_s: float | None,
        keep_waiting: Callable[[], bool] | None,
    ) -> None:
        self.future = future  # True: a slot; False: the wait ended without one
        self.joined_s = joined_s
        self.timeout_s = timeout_s  # None: waits as long as it takes, and is never shed
        self.ends_s = NEVER if timeout_s is None else joined_s + timeout_s
        self.keep_waiting = keep_waiting


class Slots:
    """At most `size` holders at a time; a freed slot goes straight to the longest waiter.

    asyncio.Semaphore scans its waiters on every release, which costs more than a model call's
    own bookkeeping once thousands of events wait on one busy model: here a release is O(1).
    Times are `time.monotonic()` seconds.
    """

    __slots__ = ("_free", "_sweep", "_waiters", "last_release_s")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[_Waiter] = deque()
        self.last_release_s = 0.0  # when a holder last left (the model last answered); 0: never
        self._sweep: Sweep | None = None  # ends limited waits; made with the first one

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot (cancelled waits included until a release skips them)."""
        return len(self._waiters)

    async def __aenter__(self) -> None:
        await self._enter()

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    async def _enter(self) -> bool:
        """Take a slot, waiting as long as it takes (never shed)."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return await self._wait(self._join(None, None))

    def _join(
        self, timeout_s: float | None, keep_waiting: Callable[[], bool] | None
    ) -> asyncio.Future[bool]:
        """A place at the end of the queue: its future says True for a slot, False if not."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        waiter = _Waiter(future, time.monotonic(), timeout_s, keep_waiting)
        self._waiters.append(waiter)
        if timeout_s is not None:
            if self._sweep is None:
                self._sweep = Sweep(loop, time.monotonic, self._expire)
            self._sweep.due_by(waiter.ends_s)
        return future

    async def _wait(self, future: asyncio.Future[bool]) -> bool:
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.result():
                self._release()  # handed a slot just as the wait was cancelled: pass it on
            raise

    def oldest_wait_s(self, now: float) -> float:
        """How long the longest waiter has waited; 0 if none.

        Slots go to the longest waiter first, so this is also at least how long no holder has
        left while callers waited.
        """
        waiters = self._waiters
        while waiters and waiters[0].future.done():  # ended waits, skipped by releases anyway
            waiters.popleft()
        return now - waiters[0].joined_s if waiters else 0.0

    @property
    def free(self) -> bool:
        """Whether a caller would get a slot at once."""
        return self._free > 0 and not self._waiters

    async def acquire(
        self, timeout_s: float | None, keep_waiting: Callable[[], bool] | None = None
    ) -> bool:
        """Take a slot, waiting at most `timeout_s` (None: as long as it takes, and never shed);
        False when none came in time or the wait was shed.

        Each time `timeout_s` passes, `keep_waiting` (if given) may extend the wait by as much
        again, in the same place in the queue.
        """
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        # Ended by the sweep with False, rather than asyncio.timeout: no task is cancelled and
        # no exception raised for each of thousands of expiring waits.
        return await self._wait(self._join(timeout_s, keep_waiting))

    def release(self) -> None:
        """Give back a slot taken with `acquire`."""
        self._release()

    def shed(self) -> int:
        """End every wait that has a time limit, unanswered (`acquire` returns False); returns
        how many. Waits without a limit keep their place."""
        kept: deque[_Waiter] = deque()
        shed = 0
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            if waiter.timeout_s is None:
                kept.append(waiter)
            else:
                waiter.future.set_result(False)
                shed += 1
        self._waiters = kept
        return shed

    def _release(self) -> None:
        self.last_release_s = time.monotonic()
        waiters = self._waiters
        while waiters:
            future = waiters.popleft().future
            if not future.done():  # an ended wait is skipped
                future.set_result(True)
                return
        self._free += 1

    def _expire(self, due_s: float) -> float:
        """End the limited waits due by `due_s`, unless told to wait on; the nearest end left."""
        nearest = NEVER
        for waiter in list(self._waiters):
            future = waiter.future
            if future.done() or waiter.timeout_s is None:
                continue
            if waiter.ends_s <= due_s:
                try:
                    wait_on = waiter.keep_waiting is not None and waiter.keep_waiting()
                except Exception as exc:  # raised in the waiting call, not lost in a callback
                    future.set_exception(exc)
                    continue
                if not wait_on:
                    future.set_result(False)  # left in the queue: releases skip it
                    continue
                waiter.ends_s = due_s + waiter.timeout_s
            nearest = min(nearest, waiter.ends_s)
        return nearest

"""A gate that lets a fixed number of callers through at once, in arrival order."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class Slots:
    """At most `size` holders at a time; a freed slot goes straight to the longest waiter.

    asyncio.Semaphore scans its waiters on every release, which costs more than a model call's
    own bookkeeping once thousands of events wait on one busy model: here a release is O(1).
    Times are `time.monotonic()` seconds.
    """

    __slots__ = ("_free", "_waiters", "last_release_s")

    def __init__(self, size: int) -> None:
        self._free = size
        # Each waiter: its future (True: a slot; False: shed), when it began to wait, and
        # whether it waits as long as it takes (then it is never shed).
        self._waiters: deque[tuple[asyncio.Future[bool], float, bool]] = deque()
        self.last_release_s = 0.0  # when a holder last left (the model last answered); 0: never

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
        return await self._wait(self._join(patient=True))

    def _join(self, patient: bool) -> asyncio.Future[bool]:
        """A place at the end of the queue: its future says True for a slot, False if shed."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, time.monotonic(), patient))
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
        while waiters and waiters[0][0].done():  # cancelled waits, skipped by releases anyway
            waiters.popleft()
        return now - waiters[0][1] if waiters else 0.0

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
        if timeout_s is None:
            return await self._enter()
        future = self._join(patient=False)
        # A timer that ends the wait with False, rather than asyncio.timeout: no task is
        # cancelled and no exception raised for each of thousands of expiring waits.
        expiry = _Expiry(future, timeout_s, keep_waiting)
        try:
            return await self._wait(future)
        finally:
            expiry.cancel()

    def release(self) -> None:
        """Give back a slot taken with `acquire`."""
        self._release()

    def shed(self) -> int:
        """End every wait that has a time limit, unanswered (`acquire` returns False); returns
        how many. Waits without a limit keep their place."""
        kept: deque[tuple[asyncio.Future[bool], float, bool]] = deque()
        shed = 0
        for waiter in self._waiters:
            future, _, patient = waiter
            if future.done():
                continue
            if patient:
                kept.append(waiter)
            else:
                future.set_result(False)
                shed += 1
        self._waiters = kept
        return shed

    def _release(self) -> None:
        self.last_release_s = time.monotonic()
        waiters = self._waiters
        while waiters:
            future = waiters.popleft()[0]
            if not future.done():  # a cancelled wait is skipped
                future.set_result(True)
                return
        self._free += 1


class _Expiry:
    """Ends a limited wait for a slot with False when its time is up, unless told to wait on."""

    __slots__ = ("_future", "_handle", "_keep_waiting", "_timeout_s")

    def __init__(
        self,
        future: asyncio.Future[bool],
        timeout_s: float,
        keep_waiting: Callable[[], bool] | None,
    ) -> None:
        self._future = future
        self._timeout_s = timeout_s
        self._keep_waiting = keep_waiting
        self._handle = future.get_loop().call_later(timeout_s, self._expire)

    def _expire(self) -> None:
        if self._future.done():
            return
        try:
            wait_on = self._keep_waiting is not None and self._keep_waiting()
        except Exception as exc:  # raised in the waiting call, not lost in a loop callback
            self._future.set_exception(exc)
            return
        if wait_on:
            self._handle = self._future.get_loop().call_later(self._timeout_s, self._expire)
            return
        self._future.set_result(False)  # left in the queue: releases and oldest_wait_s skip it

    def cancel(self) -> None:
        """Stop the timer: the wait has ended."""
        self._handle.cancel()

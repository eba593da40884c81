"""A gate that lets a fixed number of callers through at once, in arrival order."""

from __future__ import annotations

import asyncio
import time
from collections import deque


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
        await self._enter(patient=True)

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    async def _enter(self, patient: bool) -> bool:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, time.monotonic(), patient))
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

    async def acquire(self, timeout_s: float | None) -> bool:
        """Take a slot, waiting at most `timeout_s` (None: as long as it takes, and never shed);
        False when none came in time or the wait was shed."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        try:
            async with asyncio.timeout(timeout_s):
                return await self._enter(patient=timeout_s is None)
        except TimeoutError:
            return False

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

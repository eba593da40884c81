"""Back-pressure: how many records the consume loop may take, and when to pause the consumer."""

from __future__ import annotations

import asyncio
import contextlib

PAUSE_AFTER_S = 5.0  # full this long, the consumer is paused so that polls can go on


class Backpressure:
    """Bounds the events in flight; once full, takes nothing until a quarter of them are done.

    What librdkafka fetched ahead stays in its bounded queue while the router is full, ready at
    once; pausing the consumer would drop it and cost a round of fetches (measured: routing
    stalled up to half a second each time). So only a long wait pauses, so that polls keep the
    group membership.
    """

    def __init__(self, max_in_flight: int, pause_after_s: float = PAUSE_AFTER_S) -> None:
        self.max_in_flight = max_in_flight
        self.low_water = max(1, max_in_flight * 3 // 4)
        self.pause_after_s = pause_after_s
        self.paused = False  # whether the consumer is paused
        self._full_since: float | None = None
        self._room = asyncio.Event()  # set when in-flight events fall to the low-water mark

    def room(self, in_flight: int) -> int:
        """How many more records may be taken now; 0 while full."""
        if in_flight >= self.max_in_flight or (self.paused and in_flight > self.low_water):
            return 0
        return self.max_in_flight - in_flight

    def full(self, now: float) -> bool:
        """Note that the loop is full at `now`; True once it has been so long it should pause."""
        if self._full_since is None:
            self._full_since = now
        if not self.paused and now - self._full_since >= self.pause_after_s:
            self.paused = True
            return True
        return False

    @property
    def full_since_s(self) -> float | None:
        """When the current full spell began (monotonic), None while there is room."""
        return self._full_since

    def resumed(self) -> bool:
        """Note that there is room again; True when the consumer was paused and must resume."""
        self._full_since = None
        was_paused, self.paused = self.paused, False
        return was_paused

    def finished(self, in_flight: int) -> None:
        """One event is done; wakes a waiting loop at the low-water mark, not at every event."""
        if in_flight <= self.low_water:
            self._room.set()

    async def wait(self, stop: asyncio.Event, timeout_s: float) -> None:
        """Wait until the low-water mark is reached, `stop` is set, or `timeout_s` passed."""
        self._room.clear()
        room = asyncio.ensure_future(self._room.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({room, stopped}, timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            for waiter in (room, stopped):
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

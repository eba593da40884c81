"""One loop timer for many deadlines: set for the nearest, it calls its owner back to end those
that are due.

A loop timer per deadline costs about 2 µs to set and cancel on uvloop, and more with thousands
pending; a model call and a wait for a slot each had one. Deadlines this close together
(`GRAIN_S`) end in one sweep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

GRAIN_S = 0.02
# The loop's timers are of milliseconds: one may fire a little before the time it was set for.
SLACK_S = 0.001
NEVER = float("inf")


class Sweep:
    """Calls `expire(due_s)` once the nearest deadline given to `due_by` has come.

    `expire` ends what is due by `due_s` (in `clock`'s seconds) and returns the nearest
    deadline left, NEVER when none is; the timer is then set for it.
    """

    __slots__ = ("_at_s", "_clock", "_expire", "_handle", "_loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        expire: Callable[[float], float],
    ) -> None:
        self._loop = loop
        self._clock = clock
        self._expire = expire
        self._handle: asyncio.TimerHandle | None = None
        self._at_s = NEVER  # when the timer fires, in `clock`'s seconds

    def due_by(self, at_s: float) -> None:
        """Make sure the owner is called back by `at_s`."""
        if at_s < self._at_s:
            self._set(at_s)

    def cancel(self) -> None:
        """Stop the timer."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self._at_s = None, NEVER

    def _set(self, at_s: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at_s = at_s
        self._handle = self._loop.call_later(max(0.0, at_s - self._clock()), self._fire)

    def _fire(self) -> None:
        self._handle, self._at_s = None, NEVER
        now = self._clock()
        nearest = self._expire(now + SLACK_S)
        if nearest != NEVER:
            self._set(max(nearest, now + GRAIN_S))

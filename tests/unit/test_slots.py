"""The per-model call gate: order, limit, and no slot lost to a cancelled wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from logistik.routing.slots import Slots
from tests.support.models import wait_until_async


async def _hold(slots: Slots, name: str, entered: list[str], leave: asyncio.Event) -> None:
    async with slots:
        entered.append(name)
        await leave.wait()


async def test_at_most_size_holders_enter_in_arrival_order() -> None:
    slots = Slots(2)
    entered: list[str] = []
    gates = {name: asyncio.Event() for name in "abcde"}
    tasks = [asyncio.create_task(_hold(slots, n, entered, g)) for n, g in gates.items()]
    await wait_until_async(lambda: len(entered) == 2 and slots.waiting == 3)
    assert entered == ["a", "b"]
    gates["b"].set()
    await wait_until_async(lambda: len(entered) == 3)
    gates["a"].set()
    await wait_until_async(lambda: len(entered) == 4)
    assert entered == ["a", "b", "c", "d"]
    for gate in gates.values():
        gate.set()
    await asyncio.gather(*tasks)
    assert entered == ["a", "b", "c", "d", "e"]
    assert slots.waiting == 0


async def test_a_cancelled_wait_neither_enters_nor_loses_the_slot() -> None:
    slots = Slots(1)
    entered: list[str] = []
    gates = {name: asyncio.Event() for name in "abc"}
    holder = asyncio.create_task(_hold(slots, "a", entered, gates["a"]))
    await wait_until_async(lambda: entered == ["a"])
    cancelled = asyncio.create_task(_hold(slots, "b", entered, gates["b"]))
    last = asyncio.create_task(_hold(slots, "c", entered, gates["c"]))
    await wait_until_async(lambda: slots.waiting == 2)
    cancelled.cancel()
    gates["a"].set()
    await holder
    await wait_until_async(lambda: entered == ["a", "c"])
    gates["c"].set()
    await last
    assert cancelled.cancelled()
    async with slots:  # the slot came back: a new caller enters at once
        pass


async def test_a_slot_handed_to_a_wait_cancelled_before_it_ran_is_passed_on() -> None:
    slots = Slots(1)
    entered: list[str] = []
    gates = {name: asyncio.Event() for name in "bc"}
    await slots.__aenter__()  # this test holds the only slot
    handed = asyncio.create_task(_hold(slots, "b", entered, gates["b"]))
    last = asyncio.create_task(_hold(slots, "c", entered, gates["c"]))
    await wait_until_async(lambda: slots.waiting == 2)
    # Leaving hands the slot to "b" without yielding; "b" is cancelled before it resumes.
    await slots.__aexit__(None, None, None)
    handed.cancel()
    await wait_until_async(lambda: entered == ["c"])
    gates["c"].set()
    await last
    assert handed.cancelled()
    async with slots:
        pass


async def test_a_limited_wait_told_to_wait_on_keeps_its_place_and_gets_the_slot() -> None:
    slots = Slots(1)
    assert await slots.acquire(0)  # this test holds the only slot
    asked: list[float] = []

    def wait_on() -> bool:
        asked.append(time.monotonic())
        return True

    first = asyncio.create_task(slots.acquire(0.02, wait_on))
    await wait_until_async(lambda: slots.waiting == 1)
    later = asyncio.create_task(slots.acquire(None))
    await wait_until_async(lambda: len(asked) >= 3, 5, "the wait extended three times")
    assert not first.done()
    slots.release()
    assert await asyncio.wait_for(first, 5) is True  # still first in the queue
    assert not later.done()
    slots.release()
    assert await asyncio.wait_for(later, 5) is True


async def test_a_limited_wait_ends_unanswered_once_told_not_to_wait_on() -> None:
    slots = Slots(1)
    assert await slots.acquire(0)
    answers = iter([True, False])
    waiting = asyncio.create_task(slots.acquire(0.02, lambda: next(answers)))
    assert await asyncio.wait_for(waiting, 5) is False
    slots.release()  # the ended wait does not take the slot
    assert slots.free


async def test_a_failing_wait_on_check_ends_the_wait_with_its_error() -> None:
    # Raised in a timer callback, it would be lost and the caller would wait for ever.
    slots = Slots(1)
    assert await slots.acquire(0)

    def broken() -> bool:
        raise RuntimeError("check failed")

    waiting = asyncio.create_task(slots.acquire(0.02, broken))
    with pytest.raises(RuntimeError, match="check failed"):
        await asyncio.wait_for(waiting, 5)
    slots.release()
    assert slots.free


async def test_limited_waits_end_each_at_its_own_time_behind_longer_and_endless_ones() -> None:
    # One timer serves every wait of a gate: a shorter limit queued behind a longer one and
    # behind an endless one must not wait for either.
    slots = Slots(1)
    assert await slots.acquire(0)
    started = time.monotonic()

    async def timed(timeout_s: float | None) -> tuple[bool, float]:
        got = await slots.acquire(timeout_s)
        return got, time.monotonic() - started

    long = asyncio.create_task(timed(3))
    endless = asyncio.create_task(timed(None))
    await wait_until_async(lambda: slots.waiting == 2)
    short = asyncio.create_task(timed(0.2))
    middle = asyncio.create_task(timed(0.4))
    got_short, short_s = await asyncio.wait_for(short, 5)
    got_middle, middle_s = await asyncio.wait_for(middle, 5)
    assert (got_short, got_middle) == (False, False)
    assert 0.2 <= short_s < 1.5 and 0.4 <= middle_s < 1.5
    assert not long.done() and not endless.done()
    slots.release()  # the slot goes to the longest waiter, the ended ones skipped
    assert (await asyncio.wait_for(long, 5))[0] is True
    slots.release()
    assert (await asyncio.wait_for(endless, 5))[0] is True

"""Back-pressure without Kafka: room, the low-water mark, pausing after a long wait."""

from __future__ import annotations

import asyncio

from logistik.routing.backpressure import Backpressure


def test_room_is_what_is_left_of_the_bound() -> None:
    pressure = Backpressure(max_in_flight=8)
    assert [pressure.room(n) for n in (0, 5, 8, 9)] == [8, 3, 0, 0]


def test_a_full_loop_pauses_only_after_waiting_long_enough() -> None:
    pressure = Backpressure(max_in_flight=8, pause_after_s=5.0)
    assert pressure.full(now=100.0) is False
    assert pressure.full(now=104.9) is False
    assert pressure.full(now=105.0) is True  # pause the consumer now, once
    assert pressure.full(now=106.0) is False
    assert pressure.paused


def test_a_paused_loop_takes_nothing_until_the_low_water_mark() -> None:
    pressure = Backpressure(max_in_flight=8, pause_after_s=0.0)
    pressure.full(now=0.0)
    assert pressure.low_water == 6
    assert pressure.room(7) == 0
    assert pressure.room(6) == 2
    assert pressure.resumed() is True  # the consumer was paused: resume it
    assert pressure.resumed() is False


def test_room_after_a_short_wait_needs_no_resume() -> None:
    pressure = Backpressure(max_in_flight=8)
    pressure.full(now=0.0)
    assert pressure.resumed() is False
    assert pressure.full(now=10.0) is False  # the wait starts again from the last resume


async def test_a_waiting_loop_wakes_at_the_low_water_mark_not_before() -> None:
    pressure = Backpressure(max_in_flight=8)
    stop = asyncio.Event()
    waiting = asyncio.create_task(pressure.wait(stop, timeout_s=30.0))
    await asyncio.sleep(0)
    pressure.finished(in_flight=7)
    await asyncio.sleep(0)
    assert not waiting.done()
    pressure.finished(in_flight=6)
    await asyncio.wait_for(waiting, timeout=5.0)


async def test_a_waiting_loop_wakes_on_stop() -> None:
    pressure = Backpressure(max_in_flight=8)
    stop = asyncio.Event()
    waiting = asyncio.create_task(pressure.wait(stop, timeout_s=30.0))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(waiting, timeout=5.0)

"""The consumer's watch on partitions whose records the broker holds but no fetch brings."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import TopicPartition

from logistik.config import KafkaConfig
from logistik.kafka import EventConsumer, FetchStall, OffsetBook


@pytest.fixture
def consumer() -> Iterator[EventConsumer]:
    """A consumer that never connects (nothing listens on port 9), assigned t[0] and t[1]."""
    made = EventConsumer(KafkaConfig(bootstrap_servers="127.0.0.1:9"), OffsetBook())
    made._assignment = [TopicPartition("t", 0), TopicPartition("t", 1)]
    yield made
    made.shutdown()


def stats(**partitions: tuple[int, int, int]) -> str:
    """librdkafka's statistics for topic t: partition -> (next_offset, hi_offset, ls_offset)."""
    figures = {
        name.removeprefix("p"): {"next_offset": n, "hi_offset": h, "ls_offset": s}
        for name, (n, h, s) in partitions.items()
    }
    return json.dumps({"topics": {"t": {"partitions": figures}}})


def test_a_partition_behind_whose_position_does_not_move_is_reported(
    consumer: EventConsumer,
) -> None:
    consumer._on_stats(stats(p0=(5, 11, 5), p1=(10, 10, 10)))
    now = time.monotonic()
    assert consumer.fetch_stalls(60, now) == []
    [stall] = consumer.fetch_stalls(60, now + 61)
    assert (stall.topic, stall.partition, stall.position, stall.high) == ("t", 0, 5, 11)
    # The next statistics with the same position keep the time it stopped since.
    consumer._on_stats(stats(p0=(5, 12, 5), p1=(10, 10, 10)))
    assert [s.high for s in consumer.fetch_stalls(60, now + 61)] == [12]


def test_records_fetched_and_waiting_for_the_router_are_not_a_stall(
    consumer: EventConsumer,
) -> None:
    # librdkafka stops fetching once its queue is full and the router is slow to take from it.
    figures = {"next_offset": 5, "hi_offset": 11, "ls_offset": 11, "fetchq_cnt": 500}
    consumer._on_stats(json.dumps({"topics": {"t": {"partitions": {"0": figures}}}}))
    assert consumer.fetch_stalls(0, time.monotonic() + 3600) == []


def test_a_moving_position_a_caught_up_one_and_a_pause_are_not_stalls(
    consumer: EventConsumer,
) -> None:
    def watch(at_s: float, **partitions: tuple[int, int, int]) -> None:
        consumer._watch_positions(
            {("t", int(n.removeprefix("p"))): f for n, f in partitions.items()}, at_s
        )

    watch(0.0, p0=(5, 11, 11), p1=(0, 4, 4))
    watch(50.0, p0=(6, 11, 11), p1=(4, 4, 4))  # p0 moved, p1 caught up
    assert consumer.fetch_stalls(60, 100.0) == []
    assert [s.position for s in consumer.fetch_stalls(60, 110.0)] == [6]  # 60 s since it moved
    # Behind and not moving, but paused on purpose (the in-flight budget is full): forgotten.
    consumer.pause()
    watch(120.0, p0=(6, 11, 11))
    assert consumer.fetch_stalls(0, 120.0) == []
    consumer._paused = False
    watch(130.0, p0=(6, 11, 11))
    assert [s.since_s for s in consumer.fetch_stalls(0, 130.0)] == [130.0]  # counted anew
    # A retry topic's partition paused until its next record is due is not watched either.
    consumer._deferred = {("t", 0)}
    watch(140.0, p0=(6, 11, 11))
    assert consumer.fetch_stalls(0, 200.0) == []


def test_the_line_names_an_open_transaction_only_when_the_stable_offset_says_so() -> None:
    held = FetchStall("t", 0, position=5, high=26, stable=5, since_s=0.0)
    assert held.describe(90.4) == (
        "t[0]: 21 record(s) from offset 5 not fetched for 90 s: a transaction left open since "
        "offset 5 holds them (a producer began it and neither committed nor aborted it; "
        "read_committed consumers wait for it)"
    )
    served = FetchStall("t", 0, position=5, high=26, stable=26, since_s=0.0)
    assert served.describe(61.0).endswith("not fetched for 61 s: the broker does not serve them")

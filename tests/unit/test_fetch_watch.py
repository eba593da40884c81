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


def test_a_partly_filled_queue_shared_with_other_partitions_hides_nothing(
    consumer: EventConsumer,
) -> None:
    # librdkafka's fetch queue is one for all partitions: t[1]'s records in it say nothing
    # of t[0]; only a full queue (queued.min.messages) stops its fetches.
    def figures(queued: int) -> str:
        one = {"next_offset": 5, "hi_offset": 11, "ls_offset": 5, "fetchq_cnt": queued}
        return json.dumps({"topics": {"t": {"partitions": {"0": one}}}})

    consumer._on_stats(figures(500))
    assert [s.partition for s in consumer.fetch_stalls(0, time.monotonic() + 1)] == [0]
    consumer._on_stats(figures(100_000))
    assert consumer.fetch_stalls(0, time.monotonic() + 3600) == []


def watch(consumer: EventConsumer, at_s: float, **partitions: tuple[int, int, int]) -> None:
    """Statistics of topic t at a given time: partition -> (next, high, stable offsets)."""
    consumer._watch_positions(
        {("t", int(n.removeprefix("p"))): f for n, f in partitions.items()}, at_s
    )


def test_a_moving_position_a_caught_up_one_and_a_revoked_one_are_not_stalls(
    consumer: EventConsumer,
) -> None:
    watch(consumer, 0.0, p0=(5, 11, 11), p1=(0, 4, 4))
    watch(consumer, 50.0, p0=(6, 11, 11), p1=(4, 4, 4))  # p0 moved, p1 caught up
    assert consumer.fetch_stalls(60, 100.0) == []
    assert [s.position for s in consumer.fetch_stalls(60, 110.0)] == [6]  # 60 s since it moved
    consumer._assignment = [TopicPartition("t", 1)]  # t[0] revoked
    assert consumer.fetch_stalls(60, 110.0) == []
    # A retry topic's partition paused until its next record is due is not watched either.
    consumer._assignment = [TopicPartition("t", 0)]
    consumer._deferred = {("t", 0)}
    watch(consumer, 140.0, p0=(6, 11, 11))
    assert consumer.fetch_stalls(0, 200.0) == []


def test_time_paused_on_purpose_does_not_count(consumer: EventConsumer) -> None:
    base = time.monotonic() - 1000
    watch(consumer, base, p0=(5, 11, 11), p1=(4, 4, 4))  # t[0] held since base
    watch(consumer, base + 950, p0=(5, 11, 11), p1=(4, 9, 9))  # t[1] held since base + 950
    consumer.pause()  # now: base + 1000
    watch(consumer, base + 2000, p0=(5, 11, 11), p1=(4, 9, 9))  # ignored while paused
    # Seen before the pause: still reported; not yet ripe (50 s): does not ripen meanwhile.
    assert [s.partition for s in consumer.fetch_stalls(60, base + 5000)] == [0]
    consumer._paused_at = base + 900.0  # as if the pause had begun 100 s ago
    consumer.resume()
    since = {s.partition: s.since_s for s in consumer._behind.values()}
    assert since[1] == pytest.approx(base + 1050, abs=5)  # shifted by the 100 s paused
    assert [s.partition for s in consumer.fetch_stalls(60, time.monotonic())] == [0]


def test_the_line_names_an_open_transaction_only_when_the_stable_offset_says_so() -> None:
    held = FetchStall("t", 0, position=5, high=26, stable=5, since_s=0.0)
    assert held.describe(90.4) == (
        "t[0]: 21 record(s) from offset 5 not fetched for 90 s: a transaction left open since "
        "offset 5 holds them (a producer began it and neither committed nor aborted it; "
        "read_committed consumers wait for it)"
    )
    served = FetchStall("t", 0, position=5, high=26, stable=26, since_s=0.0)
    assert served.describe(61.0).endswith("not fetched for 61 s: the broker does not serve them")

"""A busy group's held events share retry records (bundles); each event is still accounted
for on its own: answered, or on the failed topic with its own offset and reason."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
import pytest

from logistik.errors import InvalidEventError, PublishError
from logistik.protocol import (
    MAX_BUNDLE_EVENTS,
    Header,
    HeaderValue,
    Reason,
    RetryMarks,
    bundle_entries,
    bundle_value,
    retry_topic,
    retry_weight,
)
from logistik.routing.registry import Circuit
from logistik.routing.router import Router, Source
from tests.support.models import wait_until_async
from tests.unit.test_router import MemoryTopics, Written, event, handler
from tests.unit.test_stalled_models import live, routed, routing

LANE = retry_topic("detect", "hang")


def shed(router: Router, name: str = "hang") -> None:
    """Put the group's model in its shed window, as `relieve` does for a stalled model."""
    instance = live(router._registry, name)
    instance.shed_until = time.monotonic() + 60


def as_headers(record: Written) -> list[tuple[str, HeaderValue]]:
    """A record's headers as the consumer gives them."""
    return [(name, value.encode()) for name, value in record.headers.items()]


async def test_the_events_of_one_poll_for_a_busy_group_share_one_retry_record() -> None:
    router, _, models, topics = routed([handler("hang"), handler("fast")], {"hang"})
    shed(router)
    with routing(router, 30) as tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(topics.on("fast-results")) == 30
    assert models.calls.count("hang") == 0
    [record] = topics.on(LANE)
    assert record.headers[Header.BUNDLE] == "30"
    assert "is busy" in record.headers[Header.ERROR]
    assert record.headers[Header.SOURCE] == "detect/0/0"
    held = topics.held(LANE)
    assert [offset for offset, _, _ in held] == list(range(30))
    assert [orjson.loads(body)["id"] for _, body, _ in held] == [f"e{n}" for n in range(30)]
    assert router.figures.deferred["detect"] == 30

    # Taken back, each event of the bundle gets its call and its answer.
    models.released.set()
    assert await router.retry(Source(LANE, 0, 0), record.value, as_headers(record))
    answered = sorted(orjson.loads(r.value or b"")["by"] for r in topics.on("hang-results"))
    assert answered == ["hang"] * 30
    assert models.calls.count("hang") == 30
    assert router.figures.retried["detect"] == 30


async def test_a_bundle_holds_at_most_its_limit_of_events() -> None:
    router, _, _, topics = routed([handler("hang"), handler("fast")], {"hang"})
    shed(router)
    with routing(router, MAX_BUNDLE_EVENTS + 5) as tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    counts = [int(r.headers[Header.BUNDLE]) for r in topics.on(LANE)]
    assert counts == [MAX_BUNDLE_EVENTS, 5]
    assert [offset for offset, _, _ in topics.held(LANE)] == list(range(MAX_BUNDLE_EVENTS + 5))


@dataclass
class NoBundles(MemoryTopics):
    """A broker that refuses every bundle (as one with a small record limit would)."""

    refusals: int = 0

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, HeaderValue]] | None = None,
    ) -> None:
        if any(name == Header.BUNDLE for name, _ in headers or []):
            self.refusals += 1
            raise PublishError(f"cannot write to topic '{topic}': Broker: Message too large")
        await super().send(topic, value, key, headers)


async def test_the_events_of_a_refused_bundle_go_to_the_retry_topic_one_by_one() -> None:
    router, _, models, _ = routed([handler("hang"), handler("fast")], {"hang"})
    topics = NoBundles()
    router._producer = topics
    shed(router)
    with routing(router, 12) as tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    singles = topics.on(LANE)
    assert len(singles) == 12
    assert all(Header.BUNDLE not in r.headers for r in singles)
    assert sorted(r.headers[Header.SOURCE] for r in singles) == sorted(
        f"detect/0/{n}" for n in range(12)
    )
    assert topics.refusals == 1  # one bundle of the twelve was tried first
    assert len(topics.on("fast-results")) == 12
    assert models.calls.count("hang") == 0


async def test_when_the_retry_topic_takes_nothing_each_event_is_failed_with_its_offset() -> None:
    router, _, _, topics = routed([handler("hang"), handler("fast")], {"hang"})
    topics.refused.add(LANE)
    shed(router)
    with routing(router, 8) as tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    failed = topics.on("detect-failed")
    assert sorted(r.headers[Header.SOURCE] for r in failed) == sorted(
        f"detect/0/{n}" for n in range(8)
    )
    assert {r.headers[Header.REASON] for r in failed} == {Reason.RETRIES_EXHAUSTED}
    assert all("the retry topic refused it" in r.headers[Header.ERROR] for r in failed)


def bundle_record(
    entries: list[tuple[int, bytes]], count: str | None = None
) -> tuple[bytes, list[tuple[str, HeaderValue]]]:
    marks = RetryMarks("hang", 0, 0, "detect", 0, entries[0][0] if entries else 0, bundle=1)
    headers = [(n, v) for n, v in marks.headers() if n != Header.BUNDLE]
    headers.append((Header.BUNDLE, (count or str(len(entries))).encode()))
    return bundle_value(entries), headers


@pytest.mark.parametrize(
    ("count", "why"),
    [
        ("0", "is not a count from 1 to 100"),
        ("101", "is not a count from 1 to 100"),
        ("x", "is not a count from 1 to 100"),
        ("3", "does not hold the 3 event(s) its header says"),
    ],
)
async def test_a_bundle_that_is_not_what_its_header_says_goes_to_the_failed_topic(
    count: str, why: str
) -> None:
    router, _, models, topics = routed([handler("hang"), handler("fast")], set())
    value, headers = bundle_record([(5, event(id="a")), (6, event(id="b"))], count)
    assert await router.retry(Source(LANE, 0, 9), value, headers, origin="detect")
    [failed] = topics.on("detect-failed")
    assert failed.headers[Header.REASON] == Reason.INVALID_HEADER
    assert why in failed.headers[Header.ERROR]
    assert failed.value == value  # the record is kept whole
    assert models.calls == []


async def test_an_entry_of_a_bundle_that_is_not_an_event_fails_alone() -> None:
    router, _, models, topics = routed([handler("hang"), handler("fast")], set())
    value, headers = bundle_record([(5, event(id="a")), (6, b"{not json"), (7, event(id="c"))])
    assert await router.retry(Source(LANE, 0, 9), value, headers, origin="detect")
    [failed] = topics.on("detect-failed")
    assert failed.headers[Header.SOURCE] == "detect/0/6"
    assert failed.headers[Header.REASON] == Reason.INVALID_JSON
    assert failed.value == b"{not json"
    assert sorted(r.headers[Header.EVENT_ID] for r in topics.on("hang-results")) == ["a", "c"]
    assert models.calls == ["hang", "hang"]


def test_a_bundle_reads_back_what_was_written_and_nothing_else() -> None:
    entries = [(0, b"{}"), (2**40, b'{"a":1}'), (7, b"")]
    value = bundle_value(entries)
    assert bundle_entries(value, 3) == entries
    for broken in (value[:-1], value + b"x", value[:5]):
        with pytest.raises(InvalidEventError):
            bundle_entries(broken, 3)
    with pytest.raises(InvalidEventError):
        bundle_entries(value, 2)


def test_a_retry_record_counts_as_the_events_it_holds() -> None:
    assert retry_weight(None) == 1
    assert retry_weight([(Header.BUNDLE, b"40")]) == 40
    # Not a valid count: one record, which the router sends to the failed topic.
    for bad in (b"0", b"101", b"-3", b"\xff", None):
        assert retry_weight([(Header.BUNDLE, bad)]) == 1


async def test_cancelling_one_event_leaves_the_others_of_its_bundle_to_finish() -> None:
    router, _, _, topics = routed([handler("hang"), handler("fast")], {"hang"})
    shed(router)
    with routing(router, 5) as tasks:
        await asyncio.sleep(0)  # each event handed its bundle, none acknowledged yet
        tasks[0].cancel()
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert isinstance(done[0], asyncio.CancelledError)
    assert done[1:] == [None] * 4
    assert [offset for offset, _, _ in topics.held(LANE)] == list(range(5))
    assert router.figures.deferred["detect"] == 4


async def test_an_event_whose_bundle_is_acknowledged_first_is_counted_as_passed_on() -> None:
    # The fast model answers only once the bundle is written: the bundle's acknowledgement is
    # in before the event's other group is done.
    router, _, models, topics = routed([handler("hang"), handler("fast")], {"hang", "fast"})
    shed(router)
    with routing(router, 6) as tasks:
        await wait_until_async(lambda: len(topics.on(LANE)) == 1, 5, "the bundle written")
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert router.figures.deferred["detect"] == 6
    assert len(topics.on("fast-results")) == 6


async def test_two_groups_whose_retry_topics_share_a_name_never_share_a_bundle() -> None:
    # Past Kafka's 249 characters a retry topic's name is cut, and two groups can share it.
    topic = "t" * 240
    named = [handler(n, event=topic, return_to=f"{n}-results") for n in ("hang-1", "hang-2")]
    router, registry, _, topics = routed(named, {"hang-1", "hang-2"})
    assert retry_topic(topic, "hang-1") == retry_topic(topic, "hang-2")
    for name in ("hang-1", "hang-2"):
        live(registry, name).shed_until = time.monotonic() + 60
    with routing(router, 3, topic) as tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    records = topics.on(retry_topic(topic, "hang-1"))
    assert sorted(r.headers[Header.RETRY_GROUP] for r in records) == ["hang-1", "hang-2"]
    assert [r.headers[Header.BUNDLE] for r in records] == ["3", "3"]


async def test_an_event_waiting_for_a_circuits_probe_goes_on_its_own_when_the_probe_is_due() -> (
    None
):
    router, registry, _, topics = routed([handler("hang"), handler("fast")], {"hang"})
    hang = live(registry, "hang")
    hang.circuit, hang.open_until = Circuit.OPEN, time.monotonic() + 30
    with routing(router, 3) as tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    records = topics.on(LANE)
    assert len(records) == 3
    assert all(Header.BUNDLE not in r.headers for r in records)
    assert all(int(r.headers[Header.DUE_AT]) > time.time() * 1000 + 20_000 for r in records)


def test_the_last_bundle_header_is_the_one_counted_as_the_one_read() -> None:
    headers: list[tuple[str, HeaderValue]] = [(Header.BUNDLE, b"1"), (Header.BUNDLE, b"100")]
    assert retry_weight(headers) == 100
    marks = RetryMarks("hang", 0, 0, "detect", 0, 0)
    assert retry_weight([*marks.headers(), *headers]) == 100

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
from logistik.routing.router import Router, Source
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

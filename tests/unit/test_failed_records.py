"""A failed record is always writable: cut when too large, bounded headers, never a silent hang."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import orjson
import pytest

from logistik.answer import Answer, Outcome
from logistik.config import RoutingConfig
from logistik.errors import PublishError
from logistik.handler import Handler
from logistik.protocol import MAX_HEADER_VALUE_BYTES, FailedRecord, Header, HeaderValue, bounded
from logistik.routing.registry import Registry
from logistik.routing.router import FAILED_VALUE_KEEP_BYTES, Router, Source
from tests.support.models import wait_until_async
from tests.unit.test_router import SubmitBySend


@dataclass
class SizedTopics(SubmitBySend):
    """A broker double that refuses records over `max_bytes` and, while `away`, everything."""

    max_bytes: int = 1_000_000
    away: int = 0  # how many sends fail as with a broker that is away
    refused: set[str] = field(default_factory=set)  # topics that refuse every record for good
    records: list[tuple[str, bytes | None, dict[str, bytes]]] = field(default_factory=list)
    sends: int = 0

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, HeaderValue]] | None = None,
    ) -> None:
        self.sends += 1
        pairs = {k: v if isinstance(v, bytes) else str(v).encode() for k, v in headers or []}
        if self.away > 0:
            self.away -= 1
            raise PublishError(f"cannot write to topic '{topic}': Local: Message timed out")
        if topic in self.refused:
            raise PublishError(
                f"cannot write to topic '{topic}': Broker: Topic authorization failed",
                permanent=True,
            )
        size = len(value or b"") + sum(len(k) + len(v) for k, v in pairs.items())
        if size > self.max_bytes:
            raise PublishError(
                f"cannot write to topic '{topic}': Broker: Message size too large", too_large=True
            )
        self.records.append((topic, value, pairs))


class BigAnswers:
    """A model whose every answer is 20 kB."""

    async def call(
        self, handler: Handler, body: bytes, timeout_s: float, headers: dict[str, str] | None = None
    ) -> Answer:
        return Answer(Outcome.OK, 200, body=b'{"x": "' + b"y" * 20_000 + b'"}')


def router_on(topics: SizedTopics, on_unwritable: list[str] | None = None) -> Router:
    routing = RoutingConfig(backoff_base_s=0, backoff_cap_s=0)
    report = None if on_unwritable is None else on_unwritable.append
    return Router(Registry(4), BigAnswers(), topics, routing, on_unwritable=report)


def not_an_event(size: int) -> bytes:
    return b"\xff" + b"x" * (size - 1)


def test_a_header_value_over_the_bound_is_cut_with_a_marker() -> None:
    huge = "é" * 600_000  # 1.2 MB of two-byte characters
    cut = bounded(huge)
    assert len(cut) <= MAX_HEADER_VALUE_BYTES
    text = cut.decode()  # still valid UTF-8
    assert text.startswith("é" * 100) and text.endswith("…[cut from 1200000 bytes]")
    assert bounded("short") == b"short"


def test_a_cut_record_says_its_original_size_and_digest_and_reads_back() -> None:
    value = not_an_event(200_000)
    record = FailedRecord("events", 2, 41, value, "invalid-json", "not JSON", "e1", "face")
    cut = record.cut(1000)
    headers = dict(cut.headers())
    assert cut.value == value[:1000]
    assert headers[Header.TRUNCATED] == b"true"
    assert headers[Header.ORIGINAL_SIZE] == b"200000"
    assert headers[Header.SHA256] == hashlib.sha256(value).hexdigest().encode()
    assert headers[Header.SOURCE] == b"events/2/41"
    pairs = [(k, v if isinstance(v, bytes) else b"") for k, v in cut.headers()]
    back = FailedRecord.from_headers(cut.value, pairs)
    assert (back.original_size, back.sha256, back.truncated) == (200_000, cut.sha256, True)
    reference = cut.cut(0)
    assert reference.value is None and reference.original_size == 200_000
    assert not FailedRecord.from_headers(value, []).truncated


async def test_a_failed_record_too_large_is_written_cut() -> None:
    topics = SizedTopics(max_bytes=100_000)
    record = FailedRecord("events", 0, 7, not_an_event(300_000), "invalid-json", "not JSON")
    await router_on(topics).write_failed("events-failed", record)
    [(topic, value, headers)] = topics.records
    assert topic == "events-failed"
    assert value == record.value[:FAILED_VALUE_KEEP_BYTES]  # type: ignore[index]
    assert headers[Header.ORIGINAL_SIZE] == b"300000"


async def test_a_topic_too_small_for_the_cut_gets_a_reference_to_the_source() -> None:
    topics = SizedTopics(max_bytes=2_000)
    record = FailedRecord("events", 0, 7, not_an_event(300_000), "invalid-json", "not JSON")
    await router_on(topics).write_failed("events-failed", record)
    [(_, value, headers)] = topics.records
    assert value is None
    assert headers[Header.SOURCE] == b"events/0/7" and headers[Header.TRUNCATED] == b"true"


async def test_a_huge_header_never_makes_the_record_unwritable() -> None:
    topics = SizedTopics(max_bytes=64_000)
    record = FailedRecord("events", 0, 7, b'{"verb": "x"}', "rejected", "no", "e" * 1_000_000)
    await router_on(topics).write_failed("events-failed", record)
    [(_, value, headers)] = topics.records
    assert value == b'{"verb": "x"}'  # the value is whole: only the header was cut
    assert headers[Header.EVENT_ID].endswith(b"[cut from 1000000 bytes]")


async def test_a_broker_away_is_waited_for_and_the_record_written_whole() -> None:
    topics = SizedTopics(away=2)
    record = FailedRecord("events", 0, 7, b"{}", "rejected", "no")
    router = router_on(topics)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("logistik.routing.router.FAILED_WRITE_RETRY_CAP_S", 0.01)
        await router.write_failed("events-failed", record)
    assert topics.sends == 3
    [(_, value, headers)] = topics.records
    assert value == b"{}" and Header.TRUNCATED not in headers


async def test_an_unwritable_failed_topic_stops_the_process_without_finishing() -> None:
    topics = SizedTopics(refused={"events-failed"})
    reasons: list[str] = []
    router = router_on(topics, reasons)
    record = FailedRecord("events", 0, 7, b"{}", "rejected", "no")
    writing = asyncio.create_task(router.write_failed("events-failed", record))
    await wait_until_async(lambda: bool(reasons), what="the stop request")
    assert "refuses even a reference to events/0/7" in reasons[0]
    assert not writing.done()  # the event is not finished, so it is never committed
    writing.cancel()
    assert topics.sends == 2  # the record, then a reference: no endless retrying


async def test_without_a_stop_hook_an_unwritable_record_raises() -> None:
    topics = SizedTopics(refused={"events-failed"})
    router = router_on(topics)
    with pytest.raises(PublishError, match="authorization"):
        await router.write_failed("events-failed", FailedRecord("e", 0, 1, b"{}", "x", "y"))


async def test_an_answer_too_large_for_its_topic_fails_the_event_with_publish_failed() -> None:
    topics = SizedTopics(max_bytes=10_000)
    registry = Registry(4)
    face = {"name": "face", "event": "detect", "endpoint": "127.0.0.1", "port": 1, "return_to": "r"}
    registry.replace([Handler.model_validate(face)])
    router = Router(registry, BigAnswers(), topics, RoutingConfig())
    await router.handle(Source("detect", 0, 3), b'{"id": "e1", "verb": "detect"}')
    [(topic, value, headers)] = topics.records
    assert topic == "detect-failed"
    assert headers[Header.REASON] == b"publish-failed"
    assert headers[Header.GROUP] == b"face"
    assert b"Message size too large" in headers[Header.ERROR]
    assert orjson.loads(value or b"")["id"] == "e1"

"""The router alone: a scripted model caller and an in-memory topic writer stand in for I/O."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from logistik.answer import Answer, Outcome
from logistik.config import RoutingConfig
from logistik.errors import PublishError
from logistik.handler import Handler
from logistik.protocol import Header, HeaderValue, Reason, bundle_entries, retry_topic
from logistik.routing.registry import Registry
from logistik.routing.router import Router, Source

Script = Callable[[Handler, bytes], Answer]


@dataclass
class ScriptedModels:
    """Answers each call as its script says, and remembers every call."""

    script: Script
    calls: list[tuple[str, bytes]] = field(default_factory=list)

    async def call(
        self, handler: Handler, body: bytes, timeout_s: float, headers: dict[str, str] | None = None
    ) -> Answer:
        self.calls.append((handler.node_id, body))
        return self.script(handler, body)

    def nodes(self) -> list[str]:
        return [node for node, _ in self.calls]


@dataclass
class Written:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: dict[str, str]


class SubmitBySend:
    """`submit` for a test's broker double: its own `send`, started as a task."""

    send: Callable[..., Coroutine[Any, Any, None]]

    def submit(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, HeaderValue]] | None = None,
    ) -> Awaitable[None]:
        return asyncio.ensure_future(self.send(topic, value, key, headers))


@dataclass
class MemoryTopics(SubmitBySend):
    """Keeps every record written; refuses the topics in `refused` as a broker would."""

    refused: set[str] = field(default_factory=set)
    records: list[Written] = field(default_factory=list)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, HeaderValue]] | None = None,
    ) -> None:
        if topic in self.refused:
            raise PublishError(f"cannot write to topic '{topic}': refused")
        pairs = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in headers or [] if v}
        self.records.append(Written(topic, value, key, pairs))

    def on(self, topic: str) -> list[Written]:
        return [r for r in self.records if r.topic == topic]

    def held(self, topic: str) -> list[tuple[int, bytes, Written]]:
        """The events on a retry topic, a bundle's one by one: (source offset, event, record)."""
        found: list[tuple[int, bytes, Written]] = []
        for record in self.on(topic):
            if Header.BUNDLE in record.headers:
                entries = bundle_entries(record.value, int(record.headers[Header.BUNDLE]))
                found += [(offset, body, record) for offset, body in entries]
            else:
                offset = int(record.headers[Header.SOURCE].rsplit("/", 1)[1])
                found.append((offset, record.value or b"", record))
        return found


def ok(body: dict[str, Any]) -> Answer:
    return Answer(Outcome.OK, 200, body=orjson.dumps(body))


def handler(name: str, **fields: Any) -> Handler:
    values: dict[str, Any] = {
        "name": name,
        "event": "detect",
        "endpoint": "127.0.0.1",
        "port": 5151,
        "return_to": f"{name}-results",
        **fields,
    }
    return Handler.model_validate(values)


def router_for(
    handlers: list[Handler], script: Script, topics: MemoryTopics | None = None, retries: int = 2
) -> tuple[Router, ScriptedModels, MemoryTopics]:
    registry = Registry(max_concurrency=4)
    registry.replace(handlers)
    models, written = ScriptedModels(script), topics or MemoryTopics()
    routing = RoutingConfig(retries=retries, backoff_base_s=0, backoff_cap_s=0)
    return Router(registry, models, written, routing), models, written


def event(**fields: Any) -> bytes:
    return orjson.dumps({"id": "e1", "verb": "detect", "published": "now", **fields})


SOURCE = ("detect", 0, 7)


async def test_an_answer_is_published_keyed_by_actor_with_its_headers() -> None:
    router, models, topics = router_for(
        [handler("face", version="1.2")], lambda h, b: ok({"seen": h.name})
    )
    await router.handle(Source(*SOURCE), event(actor={"id": "alice"}))
    [answer] = topics.records
    assert (answer.topic, answer.value, answer.key) == (
        "face-results",
        b'{"seen":"face"}',
        b"alice",
    )
    assert answer.headers == {
        Header.EVENT_ID: "e1",
        Header.NODE_ID: "face-127.0.0.1-model-0",
        Header.VERSION: "1.2",
        Header.MODEL_TYPE: "model",
    }
    assert models.nodes() == ["face-127.0.0.1-model-0"]


async def test_every_group_of_the_topic_answers_once() -> None:
    router, models, topics = router_for(
        [handler("face"), handler("age"), handler("age", node="1")],
        lambda h, b: ok({"by": h.node_id}),
    )
    await router.handle(Source(*SOURCE), event())
    assert sorted(r.topic for r in topics.records) == ["age-results", "face-results"]
    assert len(models.calls) == 2


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", Reason.EMPTY),
        (b"{not json", Reason.INVALID_JSON),
        (b"\xff\xfe", Reason.NOT_UTF8),
        (b"[1, 2]", Reason.NOT_OBJECT),
        (b'{"id": "x"}', Reason.MISSING_VERB),
    ],
)
async def test_a_record_that_is_not_an_event_goes_to_the_failed_topic(
    raw: bytes, reason: Reason
) -> None:
    router, models, topics = router_for([handler("face")], lambda h, b: ok({}))
    await router.handle(Source(*SOURCE), raw)
    [failed] = topics.records
    assert (failed.topic, failed.value, failed.headers[Header.REASON]) == (
        "detect-failed",
        raw,
        reason,
    )
    assert failed.headers[Header.SOURCE] == "detect/0/7"
    assert models.calls == []


@pytest.mark.parametrize(
    "headers",
    [
        [(Header.REPLAYS, b"\xff\xfe")],
        [(Header.REPLAYS, "²".encode())],
        [(Header.REPLAYS, b"-1")],
        [(Header.REPLAY_GROUPS, b"\xff")],
    ],
)
async def test_unreadable_replay_headers_send_the_record_to_the_failed_topic(
    headers: list[tuple[str, HeaderValue]],
) -> None:
    router, models, topics = router_for([handler("face")], lambda h, b: ok({}))
    await router.handle(Source(*SOURCE), event(), headers)
    [failed] = topics.records
    assert (failed.topic, failed.headers[Header.REASON]) == ("detect-failed", "invalid-header")
    assert failed.headers[Header.ERROR].startswith("header logistik.replay")
    assert models.calls == []


async def test_a_replayed_event_goes_only_to_the_groups_named() -> None:
    router, models, topics = router_for(
        [handler("face"), handler("age")], lambda h, b: ok({"by": h.name})
    )
    headers: list[tuple[str, HeaderValue]] = [
        (Header.REPLAYS, b"2"),
        (Header.REPLAY_GROUPS, b"age"),
    ]
    await router.handle(Source(*SOURCE), event(), headers)
    assert [r.topic for r in topics.records] == ["age-results"]
    assert models.nodes() == ["age-127.0.0.1-model-0"]


async def pass_retries(router: Router, topics: MemoryTopics, **changes: str) -> int:
    """Take every record of a retry topic back into the router, as the consume loop does,
    each due at once (the back-off is not what these tests look at), headers changed as asked."""
    taken = 0
    while retries := [r for r in topics.records if "-retry-" in r.topic]:
        for record in retries:
            topics.records.remove(record)
            fields = {**record.headers, Header.DUE_AT: "0", **changes}
            headers = [(k, v.encode()) for k, v in fields.items()]
            position = Source(record.topic, 0, taken)
            assert await router.retry(position, record.value, headers, origin="detect")
            taken += 1
    return taken


async def test_a_failed_call_waits_on_the_retry_topic_not_in_the_event() -> None:
    failing = Answer(Outcome.RETRY, 503, error="HTTP 503")
    router, models, topics = router_for([handler("face")], lambda h, b: failing, retries=2)
    await router.handle(Source(*SOURCE), event(actor={"id": "alice"}))
    [waiting] = topics.records
    assert (waiting.topic, waiting.key) == ("detect-retry-face", b"alice")
    times = (Header.DUE_AT, Header.WAITING_SINCE)
    assert abs(int(waiting.headers[Header.WAITING_SINCE]) / 1000 - time.time()) < 60
    assert {k: v for k, v in waiting.headers.items() if k not in times} == {
        Header.RETRY_GROUP: "face",
        Header.ATTEMPT: "1",
        Header.TOPIC: "detect",
        Header.SOURCE: "detect/0/7",
        Header.FAILED_NODES: "face-127.0.0.1-model-0",
        Header.ERROR: "HTTP 503",
        Header.REPLAYS: "0",
    }
    assert len(models.calls) == 1


async def test_retries_then_the_failed_topic_with_every_node_tried() -> None:
    failing = Answer(Outcome.RETRY, 503, error="HTTP 503")
    router, models, topics = router_for(
        [handler("face"), handler("face", node="1")], lambda h, b: failing, retries=2
    )
    await router.handle(Source(*SOURCE), event())
    assert await pass_retries(router, topics) == 2
    [failed] = topics.records
    assert failed.topic == "detect-failed"
    assert failed.headers[Header.REASON] == "retries-exhausted"
    assert failed.headers[Header.RETRIES] == "2"
    assert failed.headers[Header.GROUP] == "face"
    assert failed.headers[Header.SOURCE] == "detect/0/7"
    assert set(failed.headers[Header.FAILED_NODES].split(",")) == {
        "face-127.0.0.1-model-0",
        "face-127.0.0.1-model-1",
    }
    assert len(models.calls) == 3


async def test_a_retry_goes_to_another_replica_and_is_published() -> None:
    def script(h: Handler, body: bytes) -> Answer:
        if h.node == "0":
            return Answer(Outcome.RETRY, 503, error="HTTP 503")
        return ok({"by": h.node_id})

    router, _models, topics = router_for([handler("face"), handler("face", node="1")], script)
    for offset in range(4):
        await router.handle(Source("detect", 0, offset), event(id=f"e{offset}"))
    await pass_retries(router, topics)
    assert sorted(r.topic for r in topics.records) == ["face-results"] * 4
    assert {r.headers[Header.NODE_ID] for r in topics.records} == {"face-127.0.0.1-model-1"}


NO_ANSWER = Answer(Outcome.RETRY, None, error="timeout after 2 s", timed_out=True)


async def test_a_circuit_opens_after_calls_without_an_answer_and_calls_stop() -> None:
    failing = NO_ANSWER
    router, models, topics = router_for([handler("face")], lambda h, b: failing, retries=5)
    for offset in range(6):
        await router.handle(Source("detect", 0, offset), event(id=f"e{offset}"))
    # unhealthy_after_failures (3) calls, then the open circuit sends events straight on.
    assert len(models.calls) == 3
    waiting = [r for r in topics.records if r.topic == "detect-retry-face"]
    assert len(waiting) == 6
    assert waiting[-1].headers[Header.ERROR].startswith("circuit open for every instance")
    live = router._registry.instance("face-127.0.0.1-model-0")
    assert live is not None and live.circuit == "open" and live.last_error == "timeout after 2 s"


async def test_a_model_that_answers_even_5xx_keeps_its_circuit_closed() -> None:
    failing = Answer(Outcome.RETRY, 503, error="HTTP 503")
    router, models, _ = router_for([handler("face")], lambda h, b: failing, retries=5)
    for offset in range(6):
        await router.handle(Source("detect", 0, offset), event(id=f"e{offset}"))
    assert len(models.calls) == 6
    live = router._registry.instance("face-127.0.0.1-model-0")
    assert live is not None and live.circuit == "closed" and live.consecutive_failures == 6


async def test_a_half_open_circuit_closes_on_a_good_probe() -> None:
    answers = iter([NO_ANSWER] * 3 + [ok({"fine": True})] * 9)
    router, _models, topics = router_for([handler("face")], lambda h, b: next(answers))
    for offset in range(3):
        await router.handle(Source("detect", 0, offset), event(id=f"e{offset}"))
    live = router._registry.instance("face-127.0.0.1-model-0")
    assert live is not None and live.circuit == "open"
    live.open_until = 0.0  # the cool-down is over
    await router.handle(Source("detect", 0, 3), event(id="e3"))
    assert live.circuit == "closed"
    assert [r.topic for r in topics.records].count("face-results") == 1


async def test_unreadable_retry_headers_go_to_the_failed_topic() -> None:
    router, models, topics = router_for([handler("face")], lambda h, b: ok({}))
    headers: list[tuple[str, HeaderValue]] = [(Header.RETRY_GROUP, b"face"), (Header.ATTEMPT, b"x")]
    assert await router.retry(Source("detect-retry-face", 0, 3), event(), headers, origin="detect")
    [failed] = topics.records
    assert (failed.topic, failed.headers[Header.REASON]) == ("detect-failed", "invalid-header")
    assert models.calls == []


async def test_a_retry_for_a_group_that_is_gone_is_failed_with_the_reason() -> None:
    failing = Answer(Outcome.RETRY, 503, error="HTTP 503")
    router, _models, topics = router_for([handler("face")], lambda h, b: failing)
    await router.handle(Source(*SOURCE), event())
    router._registry.replace([handler("other")])
    await pass_retries(router, topics)
    [failed] = topics.records
    assert failed.headers[Header.REASON] == "no-handler"
    assert failed.headers[Header.ERROR] == "group face no longer handles topic detect"


async def test_a_channel_naming_no_group_is_failed_not_dropped() -> None:
    router, models, topics = router_for([handler("face")], lambda h, b: ok({}))
    target = {"objectType": "channel", "content": '["nobody"]'}
    await router.handle(Source(*SOURCE), event(target=target))
    [failed] = topics.records
    assert failed.headers[Header.REASON] == "no-handler"
    assert "nobody" in failed.headers[Header.ERROR]
    assert models.calls == []


async def test_a_rejected_event_is_not_retried() -> None:
    router, models, topics = router_for(
        [handler("face")], lambda h, b: Answer(Outcome.REJECTED, 400, error="HTTP 400")
    )
    await router.handle(Source(*SOURCE), event())
    [failed] = topics.records
    assert (failed.headers[Header.REASON], failed.headers[Header.RETRIES]) == ("rejected", "0")
    assert len(models.calls) == 1


async def test_an_answer_the_broker_refuses_goes_to_the_failed_topic() -> None:
    router, _, topics = router_for(
        [handler("face")], lambda h, b: ok({}), MemoryTopics(refused={"face-results"})
    )
    await router.handle(Source(*SOURCE), event())
    [failed] = topics.records
    assert (failed.topic, failed.headers[Header.REASON]) == ("detect-failed", "publish-failed")


async def test_decoys_are_called_and_compared_but_never_published() -> None:
    def script(h: Handler, body: bytes) -> Answer:
        return ok({"digit": 3 if h.name == "shadow" else 7})

    production = handler("digits")
    decoy = handler("shadow", group_id="digits", model_type="decoy", return_to=None)
    router, models, topics = router_for([production, decoy], script)
    await router.handle(Source(*SOURCE), event())
    assert [r.topic for r in topics.records] == ["digits-results"]
    assert sorted(models.nodes()) == ["digits-127.0.0.1-model-0", "shadow-127.0.0.1-decoy-0"]
    assert router.decoys.drain() == {"shadow-127.0.0.1-decoy-0": (1, 0)}


async def test_an_open_circuit_holds_events_without_using_their_retries() -> None:
    answers = iter([NO_ANSWER] * 3 + [ok({"back": 1})] * 9)
    router, _models, topics = router_for([handler("face")], lambda h, b: next(answers), retries=0)
    for offset in range(5):
        await router.handle(Source("detect", 0, offset), event(id=f"e{offset}"))
    failed = [r for r in topics.records if r.topic == "detect-failed"]
    held = [r for r in topics.records if r.topic == "detect-retry-face"]
    assert (len(failed), len(held)) == (3, 2)  # retries 0: the failed calls fail at once
    assert {r.headers[Header.ATTEMPT] for r in held} == {"0"}
    live = router._registry.instance("face-127.0.0.1-model-0")
    assert live is not None
    live.open_until = 0.0  # the cool-down is over: the next pass probes, and is answered
    await pass_retries(router, topics)
    assert [r.topic for r in topics.records].count("face-results") == 2
    assert live.circuit == "closed"


async def test_held_events_fail_once_held_too_long() -> None:
    failing = NO_ANSWER
    registry = Registry(max_concurrency=4)
    registry.replace([handler("face")])
    models, topics = ScriptedModels(lambda h, b: failing), MemoryTopics()
    routing = RoutingConfig(retries=9, backoff_base_s=0, backoff_cap_s=0, max_hold_s=60)
    router = Router(registry, models, topics, routing)
    for offset in range(4):
        await router.handle(Source("detect", 0, offset), event(id=f"e{offset}"))
    await pass_retries(router, topics, **{Header.WAITING_SINCE: "1000"})
    failed = [r for r in topics.records if r.topic == "detect-failed"]
    assert len(failed) == 4
    assert any("no instance could take it for" in r.headers[Header.ERROR] for r in failed)


def test_each_group_has_a_retry_topic_whose_name_kafka_takes() -> None:
    assert retry_topic("detect", "face") == "detect-retry-face"
    odd = retry_topic("detect", "face/v2 (gpu)")
    assert odd.startswith("detect-retry-face_v2__gpu_-") and odd != retry_topic(
        "detect", "face_v2__gpu_"
    )
    assert len(retry_topic("t" * 240, "g" * 100)) == 249
    assert all(c.isalnum() or c in "._-" for c in odd)

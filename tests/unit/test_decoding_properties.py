"""Any bytes in a record's value or headers are routed or failed with a reason, never raised."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logistik.answer import Answer, Outcome
from logistik.config import RoutingConfig
from logistik.errors import InvalidEventError
from logistik.event import decode_record
from logistik.handler import Handler
from logistik.protocol import (
    MAX_HEADER_VALUE_BYTES,
    Header,
    HeaderValue,
    Reason,
    RetryMarks,
    replay_marks,
    retry_marks,
    retry_topic,
)
from logistik.routing.registry import Registry
from logistik.routing.router import Router, Source
from tests.unit.test_router import (
    MemoryTopics,
    ScriptedModels,
    handler,
    ok,
    pass_retries,
    router_for,
)

PROPERTIES = settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

SPACE = st.sampled_from(["", " ", "\n", "\t ", "\r\n  "])
NAMES = st.sampled_from(["id", "published", "verb", "actor", "target", "object", "n"]) | st.text(
    max_size=8
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: integers beyond 64 bits as well
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
CHANNELS = st.fixed_dictionaries(
    {
        "objectType": st.just("channel"),
        "content": st.lists(st.sampled_from(["face", "age", "nobody", ""])).map(json.dumps)
        | VALUES,
    }
)


@st.composite
def json_objects(draw: st.DrawFn) -> bytes:
    """A JSON object as a producer might write it: any spacing, keys repeated, a verb mostly."""
    members: list[tuple[str, Any]] = draw(st.lists(st.tuples(NAMES, VALUES), max_size=6))
    if draw(st.booleans()):
        members.insert(draw(st.integers(0, len(members))), ("verb", "detect"))
    if draw(st.booleans()):
        members.append(("target", draw(CHANNELS)))
    space = draw(SPACE)
    parts = [f"{space}{json.dumps(k)}{draw(SPACE)}:{space}{json.dumps(v)}" for k, v in members]
    return f"{draw(SPACE)}{{{','.join(parts)}{space}}}{draw(SPACE)}".encode()


RECORDS = st.binary(max_size=200) | json_objects() | VALUES.map(lambda v: json.dumps(v).encode())
HEADER_NAMES = st.sampled_from(
    [
        Header.REPLAYS,
        Header.REPLAY_GROUPS,
        Header.RETRY_GROUP,
        Header.ATTEMPT,
        Header.DUE_AT,
        Header.WAITING_SINCE,
        Header.SOURCE,
        Header.TOPIC,
        Header.FAILED_NODES,
        Header.ERROR,
        "traceparent",
    ]
) | st.text(max_size=12)
HEADER_VALUES: st.SearchStrategy[HeaderValue] = (
    st.none()
    | st.binary(max_size=30)
    | st.sampled_from(["0", "1", "2", "-1", "²", "face", "age,face", "detect/0/7", "detect/²/1"])
    | st.integers(min_value=0).map(str)
    | st.text(max_size=30)
)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8)


@st.composite
def spoilt(draw: st.DrawFn, value: str) -> HeaderValue:
    """A header value as written, with a character put in, a long number, or bytes not UTF-8."""
    at = draw(st.integers(0, len(value)))
    changes: list[HeaderValue] = [
        value[:at] + draw(st.characters()) + value[at:],
        value[:at] + "9" * draw(st.sampled_from([19, 5000])) + value[at:],
        value.encode()[:at] + b"\xff" + value.encode()[at:],
        value[:at],
    ]
    return draw(st.sampled_from(changes) | HEADER_VALUES)


@st.composite
def retry_headers(draw: st.DrawFn) -> list[tuple[str, HeaderValue]]:
    """Headers of a retry record as logistik writes them, some of them spoilt."""
    fields: dict[str, HeaderValue] = {
        Header.RETRY_GROUP: "face",
        Header.ATTEMPT: "1",
        Header.DUE_AT: "0",
        Header.TOPIC: "detect",
        Header.SOURCE: "detect/0/7",
        Header.WAITING_SINCE: "1000",
        Header.REPLAYS: "0",
    }
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
        if draw(st.booleans()):
            fields[name] = draw(spoilt(str(fields[name])))
        else:
            del fields[name]
    return [*fields.items(), *draw(HEADERS)]


@PROPERTIES
@given(RECORDS)
def test_any_value_decodes_to_an_event_or_fails_with_a_reason(raw: bytes) -> None:
    try:
        event, body = decode_record(raw)
    except InvalidEventError as exc:
        assert exc.reason in set(Reason)
        return
    assert json.loads(body) == event  # numbers exact: json reads integers of any size
    assert event["id"] is not None and event["published"] is not None
    given_object = json.loads(raw)
    for name, value in given_object.items():
        if value is not None or name not in ("id", "published"):
            assert event[name] == value
    assert body.count(b'"id"') >= 1


@PROPERTIES
@given(HEADERS)
def test_any_replay_headers_are_read_or_refused_with_a_reason(
    headers: list[tuple[str, HeaderValue]],
) -> None:
    try:
        marks = replay_marks(headers)
    except InvalidEventError as exc:
        assert exc.reason == Reason.INVALID_HEADER
        return
    assert marks.replays >= 0


@PROPERTIES
@given(retry_headers() | HEADERS)
def test_any_retry_headers_are_read_or_refused_with_a_reason(
    headers: list[tuple[str, HeaderValue]],
) -> None:
    try:
        marks = retry_marks(headers)
    except InvalidEventError as exc:
        assert exc.reason == Reason.INVALID_HEADER
        return
    assert marks.group_id and marks.topic
    assert min(marks.attempt, marks.partition, marks.offset, marks.due_at_ms) >= 0


NAMES = st.text(st.characters(codec="utf-8", exclude_characters=",/"), min_size=1)
COUNTS = st.integers(min_value=0, max_value=10**15)


@PROPERTIES
@given(
    st.builds(
        RetryMarks,
        group_id=NAMES,
        attempt=COUNTS,
        due_at_ms=COUNTS,
        topic=NAMES,
        partition=COUNTS,
        offset=COUNTS,
        failed_nodes=st.lists(NAMES, max_size=3).map(tuple),
        error=st.text(st.characters(codec="utf-8")),
        replays=COUNTS,
        since_ms=COUNTS,
    )
)
def test_the_retry_marks_logistik_writes_read_back_the_same(marks: RetryMarks) -> None:
    headers = marks.headers()
    assert all(len(value) <= MAX_HEADER_VALUE_BYTES for _, value in headers if value is not None)
    if all(len(v.encode()) <= MAX_HEADER_VALUE_BYTES for v in (marks.group_id, marks.error)):
        assert retry_marks(headers) == marks


def scripted(kind: str) -> Any:
    """A model that answers, fails once then answers, or refuses every event."""
    calls: dict[bytes, int] = {}

    def script(h: Handler, body: bytes) -> Answer:
        calls[body] = calls.get(body, 0) + 1
        if kind == "refuses":
            return Answer(Outcome.REJECTED, 400, error="HTTP 400")
        if kind == "flaky" and calls[body] == 1:
            return Answer(Outcome.RETRY, 503, error="HTTP 503")
        return ok({"by": h.name})

    return script


def accounted(topics: MemoryTopics) -> dict[str, int]:
    """Each group's outcomes for the one record routed: answers and failed records."""
    outcomes: dict[str, int] = {}
    for record in topics.records:
        assert "-retry-" not in record.topic, "a retry was left waiting"
        if record.topic.endswith("-results"):
            group = record.topic.removesuffix("-results")
        else:
            assert record.topic == "detect-failed"
            assert Reason(record.headers[Header.REASON])
            assert record.headers[Header.SOURCE].startswith("detect")
            group = record.headers.get(Header.GROUP, "")
        outcomes[group] = outcomes.get(group, 0) + 1
    return outcomes


async def route(router: Router, topics: MemoryTopics, raw: bytes, headers: Any) -> None:
    await router.handle(Source("detect", 0, 7), raw, headers)
    await pass_retries(router, topics)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS, HEADERS, st.sampled_from(["answers", "flaky", "refuses"]))
def test_the_router_answers_or_fails_every_record_whatever_its_bytes(
    raw: bytes, headers: list[tuple[str, HeaderValue]], kind: str
) -> None:
    router, _models, topics = router_for([handler("face"), handler("age")], scripted(kind))
    asyncio.run(route(router, topics, raw, headers))
    outcomes = accounted(topics)
    assert outcomes, "the record left no trace"
    if "" in outcomes:  # not an event, or it names no group: one failed record says why
        assert outcomes == {"": 1}
    else:
        assert set(outcomes) <= {"face", "age"} and set(outcomes.values()) == {1}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS, retry_headers())
def test_the_router_takes_any_retry_record_back_or_fails_it(
    raw: bytes, headers: list[tuple[str, HeaderValue]]
) -> None:
    # A due time in the far future is waited for up to the longest back-off: none here.
    registry = Registry(max_concurrency=4)
    registry.replace([handler("face")])
    topics = MemoryTopics()
    routing = RoutingConfig(backoff_base_s=0, backoff_cap_s=0, retry_after_cap_s=0)
    router = Router(registry, ScriptedModels(scripted("answers")), topics, routing)

    async def retried() -> bool:
        position = Source(retry_topic("detect", "face"), 0, 3)
        return await router.retry(position, raw, headers, origin="detect")

    assert asyncio.run(retried())
    outcomes = accounted(topics)
    assert sum(outcomes.values()) == 1
    if "face" in outcomes and topics.records[0].topic == "face-results":
        assert orjson.loads(topics.records[0].value or b"") == {"by": "face"}


async def test_a_retry_record_naming_another_topic_or_group_is_failed_on_its_own_topic() -> None:
    router, models, topics = router_for([handler("face"), handler("age")], scripted("answers"))
    for group, source in [("age", "detect/0/7"), ("face", "elsewhere/0/7")]:
        headers: list[tuple[str, HeaderValue]] = [
            (Header.RETRY_GROUP, group),
            (Header.ATTEMPT, "1"),
            (Header.DUE_AT, "0"),
            (Header.SOURCE, source),
        ]
        position = Source(retry_topic("detect", "face"), 0, 3)
        assert await router.retry(position, orjson.dumps({"verb": "v"}), headers, origin="detect")
    assert [(r.topic, r.headers[Header.REASON]) for r in topics.records] == [
        ("detect-failed", "invalid-header")
    ] * 2
    assert models.calls == []

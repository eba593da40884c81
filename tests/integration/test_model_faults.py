"""A bad model or a bad record never stops the good ones: faults injected while events flow.

Each test runs a healthy group beside the fault, asserts that the healthy groups' answers do
not stop, and accounts for every (event, group) afterwards: answered, failed with a reason,
lost or duplicated. Each prints its row of the README's fault table.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from logistik.kafka import retry_group
from logistik.protocol import retry_topic
from tests.support.accounting import Tally, group_of, tally
from tests.support.harness import RouterProcess, RouterThread, handler, make_config
from tests.support.kafkatools import (
    Record,
    TopicReader,
    committed_offsets,
    create_topics,
    event,
    event_producer,
    held_events,
    produce,
    unique,
    wait_all_committed,
)
from tests.support.models import ModelServer, Reply, echo, wait_until
from tests.support.raw_models import Mode, RawModel

StartModel = Callable[..., ModelServer]
StartRouter = Callable[[dict[str, Any]], RouterThread]
StartProcess = Callable[[dict[str, Any]], RouterProcess]

HEALTHY_WITHIN_S = 30.0  # the healthy groups answer every event while the fault lasts


@pytest.fixture
def raw_model() -> Iterator[Callable[..., RawModel]]:
    """Start misbehaving model servers; each is stopped after the test."""
    started: list[RawModel] = []

    def start(mode: Mode, **options: Any) -> RawModel:
        model = RawModel(mode, **options).start()
        started.append(model)
        return model

    yield start
    for model in started:
        model.healed.set()
        model.stop()


def fault_topics(servers: str) -> tuple[str, str]:
    """Two fresh topics with their results and failed topics (logistik makes the retry topics)."""
    shared, other = unique("shared"), unique("other")
    for topic in (shared, other):
        create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    return shared, other


def answered_ids(records: list[Record], group: str) -> set[str]:
    """The event ids a group published answers for."""
    return {r.headers["logistik.event_id"] for r in records if group_of(r) == group}


def wait_healthy(
    reader: TopicReader,
    topics: tuple[str, str],
    sent: list[dict[str, Any]],
    other_sent: list[dict[str, Any]],
) -> float:
    """Seconds from `fast`'s first answer until both healthy groups answered all their events."""
    shared_ids, other_ids = {e["id"] for e in sent}, {e["id"] for e in other_sent}
    shared, other = topics
    wait_until(
        lambda: bool(answered_ids(reader.on(f"{shared}-results"), "fast")),
        HEALTHY_WITHIN_S,
        "the healthy group's first answer",
    )
    started = time.monotonic()
    wait_until(
        lambda: (
            answered_ids(reader.on(f"{shared}-results"), "fast") >= shared_ids
            and answered_ids(reader.on(f"{other}-results"), "elsewhere") >= other_ids
        ),
        HEALTHY_WITHIN_S,
        "the healthy groups' answers while the fault lasts",
    )
    return time.monotonic() - started


def account(
    fault: str,
    reader: TopicReader,
    shared: str,
    other: str,
    sent: list[dict[str, Any]],
    other_sent: list[dict[str, Any]],
    faulty: str,
) -> Tally:
    """The tally of both topics' groups: `faulty` and `fast` on one, `elsewhere` on the other."""
    answers = [*reader.on(f"{shared}-results"), *reader.on(f"{other}-results")]
    failed = [*reader.on(f"{shared}-failed"), *reader.on(f"{other}-failed")]
    on_shared = tally(fault, [e["id"] for e in sent], [faulty, "fast"], answers, failed)
    return on_shared + tally(fault, [e["id"] for e in other_sent], ["elsewhere"], answers, failed)


def faulty_done(reader: TopicReader, shared: str, sent: list[dict[str, Any]], group: str) -> bool:
    """Whether every event has an answer or a failed record from the faulty group."""
    answered = answered_ids(reader.on(f"{shared}-results"), group)
    failed = {
        r.headers.get("logistik.event_id")
        for r in reader.on(f"{shared}-failed")
        if r.headers.get("logistik.group") == group
    }
    return {e["id"] for e in sent} <= answered | failed


DESCRIBED: dict[str, str] = {
    "drip": "model drips its answer, 1 byte / 100 ms",
    "short": "model sends a Content-Length it never fills",
    "silent": "model accepts the connection, never answers",
}


@pytest.mark.parametrize("mode", ["drip", "short", "silent"])
def test_a_model_that_never_finishes_an_answer_holds_no_other_group(
    servers: str,
    mode: Mode,
    raw_model: Callable[..., RawModel],
    model_server: StartModel,
    router: StartRouter,
) -> None:
    shared, other = fault_topics(servers)
    hanging, fast, elsewhere = raw_model(mode), model_server(), model_server()
    config = make_config(
        servers,
        [
            handler("hang", shared, hanging.port, timeout=2, retries=2),
            handler("fast", shared, fast.port),
            handler("elsewhere", other, elsewhere.port),
        ],
        routing={
            "max_in_flight": 200,
            "max_concurrency_per_handler": 8,
            "unhealthy_cooldown_s": 1,
        },
    )
    router(config)
    sent = [event(actor=f"a{i}") for i in range(300)]
    other_sent = [event(actor=f"b{i}") for i in range(100)]
    topics = (f"{shared}-results", f"{other}-results", f"{shared}-failed", f"{other}-failed")
    with TopicReader(servers, *topics) as reader:
        produce(servers, shared, sent)
        produce(servers, other, other_sent)
        healthy_s = wait_healthy(reader, (shared, other), sent, other_sent)
        assert hanging.count > 0 and not hanging.healed.is_set()
        assert answered_ids(reader.on(f"{shared}-results"), "hang") == set()
        hanging.healed.set()
        wait_until(
            lambda: faulty_done(reader, shared, sent, "hang"), 90, "the hanging group's events"
        )
        result = account(DESCRIBED[mode], reader, shared, other, sent, other_sent, "hang")
    print(f"fault table row: {result.row()}")
    print(f"{mode}: healthy groups answered everything in {healthy_s:.1f} s")
    assert result.lost == 0
    assert result.duplicated == 0  # no crash: each (event, group) has one outcome
    reasons = {r.headers["logistik.reason"] for r in reader.on(f"{shared}-failed")}
    assert reasons <= {"retries-exhausted"}
    assert {r.headers["logistik.group"] for r in reader.on(f"{shared}-failed")} <= {"hang"}


def peak_rss_mb(pid: int) -> float:
    """The highest resident memory a process has had, in MB."""
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    """A process's resident memory now, in MB."""
    return _status_kb(pid, "VmRSS") / 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def test_answers_over_the_size_limit_are_rejected_unread_and_memory_stays_flat(
    servers: str, model_server: StartModel, router_process: StartProcess
) -> None:
    shared, other = fault_topics(servers)
    ten_mb = b'{"pad": "' + b"x" * 10_000_000 + b'"}'
    huge = model_server(lambda ev, n: Reply(200, raw=ten_mb))
    fast, elsewhere = model_server(), model_server()
    config = make_config(
        servers,
        [
            handler("huge", shared, huge.port),
            handler("fast", shared, fast.port),
            handler("elsewhere", other, elsewhere.port),
        ],
        routing={"max_concurrency_per_handler": 8},
    )
    warm_up = [event() for _ in range(20)]
    sent = [event(actor=f"a{i}") for i in range(200)]
    other_sent = [event(actor=f"b{i}") for i in range(100)]
    topics = (f"{shared}-results", f"{other}-results", f"{shared}-failed", f"{other}-failed")
    with TopicReader(servers, *topics) as reader:
        running = router_process(config)
        assert running.process is not None
        produce(servers, other, warm_up)
        reader.wait_for(f"{other}-results", len(warm_up))
        before_mb = rss_mb(running.process.pid)
        produce(servers, shared, sent)
        produce(servers, other, other_sent)
        healthy_s = wait_healthy(reader, (shared, other), sent, other_sent)
        wait_until(lambda: faulty_done(reader, shared, sent, "huge"), 60, "the huge answers")
        grown_mb = peak_rss_mb(running.process.pid) - before_mb
        running.signal(signal.SIGTERM)
        assert running.wait(30) == 0
        result = account(
            "model answers 10 MB bodies (limit 1 MiB)",
            reader,
            shared,
            other,
            sent,
            [*warm_up, *other_sent],
            "huge",
        )
    print(f"fault table row: {result.row()}")
    print(f"huge answers: healthy groups done in {healthy_s:.1f} s; memory grew {grown_mb:.0f} MB")
    assert result.lost == 0 and result.duplicated == 0
    failed = reader.on(f"{shared}-failed")
    assert {r.headers["logistik.reason"] for r in failed} == {"rejected"}
    assert {r.headers["logistik.error"] for r in failed} == {
        "HTTP 200 with a body over 1048576 bytes (routing.max_answer_bytes)"
    }
    assert huge.count == len(sent)  # rejected: never retried
    # 200 answers of 10 MB, 8 at a time, read in full would take far more.
    assert grown_mb < 40


def event_bytes(**fields: Any) -> bytes:
    """An event's JSON, with a fresh id."""
    return orjson.dumps(event(**fields))


def test_poison_records_are_failed_with_their_reason_and_the_stream_flows_on(
    servers: str, model_server: StartModel, router: StartRouter
) -> None:
    shared, other = fault_topics(servers)
    fast, second, elsewhere = model_server(), model_server(), model_server()
    config = make_config(
        servers,
        [
            handler("fast", shared, fast.port),
            handler("second", shared, second.port),
            handler("elsewhere", other, elsewhere.port),
        ],
    )
    big_event = event(object={"content": "x" * 900_000})
    before = [event(actor=f"a{i}") for i in range(100)]
    after = [event(actor=f"c{i}") for i in range(100)]
    other_sent = [event(actor=f"b{i}") for i in range(100)]
    poison: list[tuple[bytes, list[tuple[str, bytes | str | None]], str]] = [
        (b"{not json", [], "invalid-json"),
        (b"\xff\xfe{}", [], "not-utf8"),
        (b"", [], "empty"),
        (b"[1, 2]", [], "not-object"),
        (b'{"id": "no-verb"}', [], "missing-verb"),
        (b"x" * 900_000, [], "invalid-json"),
        (event_bytes(), [("logistik.replays", b"\xff\xfe")], "invalid-header"),
        (event_bytes(), [("logistik.replays", "²".encode())], "invalid-header"),
        (event_bytes(), [("logistik.replay_groups", b"\xff")], "invalid-header"),
    ]
    retry_headers = {
        "logistik.retry_group": b"fast",
        "logistik.attempt": b"1",
        "logistik.due_at": b"0",
        "logistik.source": f"{shared}/0/0".encode(),
    }

    def spoilt(**changes: bytes) -> list[tuple[str, bytes | str | None]]:
        return [*{**retry_headers, **{f"logistik.{k}": v for k, v in changes.items()}}.items()]

    retry_poison: list[tuple[bytes, list[tuple[str, bytes | str | None]], str]] = [
        (event_bytes(), [], "invalid-header"),
        (event_bytes(), spoilt(attempt=b"x"), "invalid-header"),
        (event_bytes(), spoilt(source="t/²/1".encode()), "invalid-header"),
        (event_bytes(), spoilt(due_at=b"\xff"), "invalid-header"),
        (b"\xff", spoilt(), "not-utf8"),
    ]
    topics = (f"{shared}-results", f"{other}-results", f"{shared}-failed", f"{other}-failed")
    create_topics(servers, retry_topic(shared, "fast"))
    with TopicReader(servers, *topics) as reader:
        router(config)
        produce(servers, shared, before)
        for value, headers, _ in poison:
            produce(servers, shared, [value], headers=headers)
        for value, headers, _ in retry_poison:
            produce(servers, retry_topic(shared, "fast"), [value], headers=headers)
        produce(servers, shared, [big_event, *after])
        produce(servers, other, other_sent)
        good = [*before, big_event, *after]
        healthy_s = wait_healthy(reader, (shared, other), good, other_sent)
        wait_until(
            lambda: (
                answered_ids(reader.on(f"{shared}-results"), "second") >= {e["id"] for e in good}
            ),
            HEALTHY_WITHIN_S,
            "the second group's answers",
        )
        expected = [*poison, *retry_poison]
        reader.wait_for(f"{shared}-failed", len(expected))
        wait_all_committed(servers, config["kafka"]["group_id"], shared, len(good) + len(poison))
        retries = retry_group(config["kafka"]["group_id"])
        wait_all_committed(servers, retries, retry_topic(shared, "fast"), len(retry_poison))
        failed = reader.on(f"{shared}-failed")
        good_tally = account("", reader, shared, other, good, other_sent, "second")
    reasons = Counter((r.value or b"", r.headers["logistik.reason"]) for r in failed)
    assert reasons == Counter((value, reason) for value, _, reason in expected)
    assert good_tally.answered == good_tally.events and good_tally.duplicated == 0
    poison_tally = Tally(
        "poison records: not JSON, not UTF-8, empty, 900 KB, bad replay and retry headers",
        len(expected),
        0,
        len(failed),
        len(expected) - len(failed),
        0,
    )
    print(f"fault table row: {(poison_tally + good_tally).row()}")
    print(f"poison: healthy groups answered everything in {healthy_s:.1f} s")


def fails_twice_when(chosen: Callable[[str], bool]) -> Callable[[dict[str, Any], int], Reply]:
    """A model that answers 503 to the first two calls of the chosen events, then echoes: 50 ms."""
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def behaviour(ev: dict[str, Any], count: int) -> Reply:
        with lock:
            calls[ev["id"]] += 1
            attempt = calls[ev["id"]]
        if chosen(ev["id"]) and attempt <= 2:
            return Reply(503, {"error": "busy"}, delay_s=0.05)
        return replace(echo(ev, count), delay_s=0.05)

    return behaviour


class PacedProducer:
    """Produces events at a steady rate from a thread, as a live stream does (no backlog)."""

    def __init__(self, servers: str, topic: str, values: list[dict[str, Any]], per_s: float):
        self._producer = event_producer(servers, linger_ms=5)
        self._topic, self._values, self._per_s = topic, values, per_s
        self._thread = threading.Thread(target=self._produce, daemon=True)

    def _produce(self) -> None:
        started = time.monotonic()
        for index, value in enumerate(self._values):
            self._producer.produce(self._topic, orjson.dumps(value))
            ahead_s = index / self._per_s - (time.monotonic() - started)
            if ahead_s > 0:
                self._producer.poll(ahead_s)  # paces the stream; serves delivery reports
        assert self._producer.flush(20) == 0, "events not acknowledged by the broker"

    def __enter__(self) -> PacedProducer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(60)


def one_in_three(ident: str) -> bool:
    """A stable choice of a third of the event ids."""
    return hashlib.sha256(ident.encode()).digest()[0] % 3 == 0


# How long after its answer a finished retry record may still be uncommitted when the process
# dies: the commit interval (200 ms), the call in flight (50 ms) and scheduling on a busy machine.
# Records waiting for their due time (2 to 4 s here) must not hold the commit point any longer.
RETRY_COMMIT_WINDOW_MS = 1500


# Retries' crash accounting is the router's: kill -9 on the embedded broker is
# test_lifecycle's test_kill_9_mid_stream_loses_nothing.
@pytest.mark.one_broker
def test_kill_9_in_the_middle_of_retries_duplicates_only_records_in_flight(
    servers: str, model_server: StartModel, router_process: StartProcess
) -> None:
    shared, other = fault_topics(servers)
    flaky = model_server(fails_twice_when(one_in_three))
    fast = model_server(lambda ev, n: replace(echo(ev, n), delay_s=0.05))
    elsewhere = model_server()
    config = make_config(
        servers,
        [
            handler("flaky", shared, flaky.port, retries=3),
            handler("fast", shared, fast.port),
            handler("elsewhere", other, elsewhere.port),
        ],
        routing={"max_in_flight": 20, "backoff_base_s": 2, "backoff_cap_s": 4},
    )
    sent = [event(actor=f"a{i}") for i in range(3000)]
    other_sent = [event(actor=f"b{i}") for i in range(300)]
    chosen = {e["id"] for e in sent if one_in_three(e["id"])}
    topics = (
        shared,
        f"{shared}-results",
        f"{other}-results",
        f"{shared}-failed",
        f"{other}-failed",
        retry_topic(shared, "flaky"),
        retry_topic(shared, "fast"),  # a slow moment on a loaded machine retries it too
    )
    group_id = config["kafka"]["group_id"]
    with TopicReader(servers, *topics) as reader:
        first = router_process(config)
        produce(servers, other, other_sent)
        reader.wait_for(f"{other}-results", len(other_sent), 60)
        with PacedProducer(servers, shared, sent, 300):
            wait_until(
                lambda: len(answered_ids(reader.on(f"{shared}-results"), "flaky") & chosen) >= 100,
                60,
                "retries under way, some answered",
            )
            killed_ms = time.time() * 1000
            first.kill()
        assert first.wait(10) == -signal.SIGKILL, first.log()[-3000:]
        # Events from the commit point on are delivered again and start their first attempt
        # again; any other event answered twice was answered twice through its retries.
        [committed] = committed_offsets(servers, group_id, shared)
        assert committed < len(sent), "every event was committed before the kill"
        reader.wait_for(shared, len(sent))
        written = Counter(orjson.loads(r.value or b"{}")["id"] for r in reader.on(shared))
        assert max(written.values()) == 1, "the test's producer wrote an event twice"
        first_attempts = {
            orjson.loads(r.value or b"{}")["id"] for r in reader.on(shared) if r.offset >= committed
        }
        second = router_process(config)
        wait_until(
            lambda: (
                faulty_done(reader, shared, sent, "flaky")
                and faulty_done(reader, shared, sent, "fast")
                and answered_ids(reader.on(f"{other}-results"), "elsewhere")
                >= {e["id"] for e in other_sent}
            ),
            120,
            "every event answered after the restart",
        )
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0, second.log()
        result = account(
            "`kill -9` of `logistik run` during retries",
            reader,
            shared,
            other,
            sent,
            other_sent,
            "flaky",
        )
        answers = Counter(
            (r.headers["logistik.event_id"], group_of(r)) for r in reader.on(f"{shared}-results")
        )
        retried = {
            (held["id"], r.headers["logistik.retry_group"])
            for group in ("flaky", "fast")
            for r in reader.on(retry_topic(shared, group))
            for _, held in held_events(r)
        }
        first_answer_ms: dict[tuple[str, str], int] = {}
        for r in reader.on(f"{shared}-results"):
            pair = (r.headers["logistik.event_id"], group_of(r))
            first_answer_ms[pair] = min(first_answer_ms.get(pair, r.timestamp_ms), r.timestamp_ms)
    print(f"fault table row: {result.row()}")
    duplicated = {pair for pair, n in answers.items() if n > 1}
    from_retries = {pair for pair in duplicated if pair[0] not in first_attempts}
    print(
        f"kill -9 during retries: {len(retried)} (event, group) pairs retried "
        f"({sum(g == 'fast' for _, g in retried)} of the fast group); "
        f"{len(duplicated)} pairs answered twice: {len(duplicated) - len(from_retries)} "
        f"delivered again from the commit point, {len(from_retries)} through retries"
    )
    assert result.lost == 0
    assert from_retries <= retried
    # A retry answered twice was called, or finished just before the kill: none was held back
    # by a record waiting for its due time, as it would be if waiting records held the commit.
    held_back = {
        pair: round(killed_ms - first_answer_ms[pair])
        for pair in from_retries
        if killed_ms - first_answer_ms[pair] > RETRY_COMMIT_WINDOW_MS
    }
    assert not held_back, f"answered long before the kill, yet taken again: {held_back}"

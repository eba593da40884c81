"""The README's answer table, end to end: real broker, real model servers, logistik's router."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from logistik.kafka import retry_group
from logistik.protocol import retry_topic
from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import (
    TopicReader,
    create_topics,
    end_offsets,
    event,
    produce,
    unique,
    wait_all_committed,
)
from tests.support.models import ModelServer, Reply, echo, wait_until

StartModel = Callable[..., ModelServer]
StartRouter = Callable[[dict[str, Any]], RouterThread]


@pytest.fixture
def topic(servers: str) -> str:
    """A fresh topic with its results and failed topics, one partition each."""
    name = unique("events")
    create_topics(servers, name, f"{name}-results", f"{name}-failed")
    return name


def always(reply: Reply) -> Callable[[dict[str, Any], int], Reply]:
    """A behaviour that answers every request the same way."""
    return lambda _event, _count: reply


def fail_first(failures: int, failure: Reply) -> Callable[[dict[str, Any], int], Reply]:
    """A behaviour that fails the first `failures` calls of each event, then echoes."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def behaviour(ev: dict[str, Any], count: int) -> Reply:
        with lock:
            seen[ev["id"]] += 1
            attempt = seen[ev["id"]]
        return failure if attempt <= failures else echo(ev, count)

    return behaviour


def run_one(
    servers: str,
    topic: str,
    router: StartRouter,
    handlers: list[dict[str, Any]],
    events: Sequence[dict[str, Any] | bytes],
    **sections: Any,
) -> dict[str, Any]:
    """Start a router, produce events, wait until logistik committed all; returns the config."""
    config = make_config(servers, handlers, **sections)
    running = router(config)
    produce(servers, topic, events)
    wait_all_committed(servers, config["kafka"]["group_id"], topic, len(events))
    wait_until(running.settled, 30, "retries to be handled")
    return config


def test_ok_answer_published_with_key_and_headers(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    model = model_server()
    sent = [event(actor=f"a{i}") for i in range(5)]
    with TopicReader(servers, f"{topic}-results") as reader:
        run_one(servers, topic, router, [handler("face", topic, model.port, version="7")], sent)
        records = reader.wait_for(f"{topic}-results", 5)
    assert sorted(r.json()["id"] for r in records) == sorted(e["id"] for e in sent)
    for record in records:
        assert record.headers["logistik.event_id"] == record.json()["id"]
        assert record.headers["logistik.node_id"] == "face-127.0.0.1-model-0"
        assert record.headers["logistik.version"] == "7"
    keys = {r.json()["id"]: r.key for r in records}
    assert all(keys[e["id"]] == e["actor"]["id"].encode() for e in sent)
    assert end_offsets(servers, f"{topic}-failed") == [0]


def test_seed_style_pair_body_publishes_the_response(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    model = model_server(always(Reply(200, [{"label": "cat"}, 200])))
    with TopicReader(servers, f"{topic}-results") as reader:
        run_one(servers, topic, router, [handler("m", topic, model.port)], [event()])
        [record] = reader.wait_for(f"{topic}-results", 1)
    assert record.json() == {"label": "cat"}


@pytest.mark.parametrize("status", [204, 422])
def test_ignored_and_duplicate_publish_nothing(
    servers: str, topic: str, model_server: StartModel, router: StartRouter, status: int
) -> None:
    model = model_server(always(Reply(status)))
    run_one(servers, topic, router, [handler("m", topic, model.port)], [event(), event()])
    assert model.count == 2  # one call per event: no retry
    assert end_offsets(servers, f"{topic}-results") == [0]
    assert end_offsets(servers, f"{topic}-failed") == [0]


@pytest.mark.parametrize("status", [400, 404])
def test_permanent_errors_go_to_failed_topic_without_retry(
    servers: str, topic: str, model_server: StartModel, router: StartRouter, status: int
) -> None:
    model = model_server(always(Reply(status, {"error": "unknown object"})))
    sent = event()
    with TopicReader(servers, f"{topic}-failed") as reader:
        run_one(servers, topic, router, [handler("m", topic, model.port, retries=5)], [sent])
        [record] = reader.wait_for(f"{topic}-failed", 1)
    assert model.count == 1
    assert record.json()["id"] == sent["id"]
    assert record.headers["logistik.reason"] == "rejected"
    assert record.headers["logistik.error"] == f'HTTP {status}: {{"error":"unknown object"}}'
    assert record.headers["logistik.failed_nodes"] == "m-127.0.0.1-model-0"
    assert record.headers["logistik.group"] == "m"
    assert record.headers["logistik.topic"] == topic
    assert end_offsets(servers, f"{topic}-results") == [0]


def test_answer_the_broker_refuses_goes_to_failed_topic(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    model = model_server(lambda e, _n: Reply(200, {"id": e["id"], "pad": "x" * 4000}))
    sent = [event() for _ in range(3)]
    # An answer larger than the producer takes: the answer's delivery report is an error.
    producer = {"message.max.bytes": 3000}
    with TopicReader(servers, f"{topic}-failed") as reader:
        config = [handler("m", topic, model.port)]
        run_one(servers, topic, router, config, sent, kafka={"producer": producer})
        records = reader.wait_for(f"{topic}-failed", 3)
    assert model.count == 3
    assert sorted(r.json()["id"] for r in records) == sorted(e["id"] for e in sent)
    for record in records:
        assert record.headers["logistik.reason"] == "publish-failed"
        assert f"cannot write to topic '{topic}-results'" in record.headers["logistik.error"]
        assert record.headers["logistik.failed_nodes"] == "m-127.0.0.1-model-0"


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (Reply(503, {"busy": True}), "HTTP 503"),
        (Reply(429), "HTTP 429"),
        (Reply(500, raw=b"boom"), "HTTP 500: boom"),
        (Reply(200, raw=b"<html>not json</html>"), "not JSON"),
    ],
)
def test_retryable_answers_are_retried_then_succeed(
    servers: str,
    topic: str,
    model_server: StartModel,
    router: StartRouter,
    failure: Reply,
    error: str,
) -> None:
    model = model_server(fail_first(2, failure))
    sent = event()
    with TopicReader(servers, f"{topic}-results") as reader:
        run_one(servers, topic, router, [handler("m", topic, model.port, retries=3)], [sent])
        [record] = reader.wait_for(f"{topic}-results", 1)
    assert record.json()["id"] == sent["id"]
    assert model.count == 3
    assert end_offsets(servers, f"{topic}-failed") == [0]


def test_retries_exhausted_go_to_failed_topic_and_alert(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    model = model_server(always(Reply(500, raw=b"model crashed")))
    hook = model_server(always(Reply(200, {"ok": True})), path="/hook")
    sent = event()
    with TopicReader(servers, f"{topic}-failed") as reader:
        run_one(
            servers,
            topic,
            router,
            [handler("face", topic, model.port, retries=2)],
            [sent],
            webhook={"url": f"http://127.0.0.1:{hook.port}/hook"},
        )
        [record] = reader.wait_for(f"{topic}-failed", 1)
    assert model.count == 3  # the first call and two retries
    assert record.json()["id"] == sent["id"]
    headers = record.headers
    assert headers["logistik.reason"] == "retries-exhausted"
    assert headers["logistik.retries"] == "2"
    assert headers["logistik.error"] == "HTTP 500: model crashed"
    assert headers["logistik.failed_nodes"] == "face-127.0.0.1-model-0"
    assert headers["logistik.source"] == f"{topic}/0/0"
    assert datetime.fromisoformat(headers["logistik.failed_at"]).tzinfo is not None
    wait_until(lambda: hook.count == 1, what="the webhook alert")
    text = hook.requests[0]["text"]
    assert "| name | node | endpoint | port |" in text
    assert f"| face | face-127.0.0.1-model-0 | 127.0.0.1 | {model.port} |" in text
    assert sent["id"] in text


def test_timeout_and_refused_are_retried_then_failed(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    slow = model_server(always(Reply(200, {"late": True}, delay_s=2.0)))
    closed_port = ModelServer().port  # never started: connections are refused
    handlers = [
        handler("slow", topic, slow.port, timeout=0.3, retries=1),
        handler("gone", topic, closed_port, retries=1),
    ]
    with TopicReader(servers, f"{topic}-failed") as reader:
        run_one(servers, topic, router, handlers, [event()])
        records = reader.wait_for(f"{topic}-failed", 2)
    errors = {r.headers["logistik.group"]: r.headers["logistik.error"] for r in records}
    assert errors["slow"] == "timeout after 0.3 s"
    assert errors["gone"].startswith(f"cannot connect to 127.0.0.1:{closed_port}")
    assert slow.count == 2


def test_retry_after_is_honoured(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    model = model_server(fail_first(1, Reply(429, headers={"Retry-After": "1"})))
    run_one(servers, topic, router, [handler("m", topic, model.port)], [event()])
    assert model.count == 2
    assert model.times[1] - model.times[0] >= 1.0


def test_malformed_records_go_to_failed_topic_with_raw_bytes(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    model = model_server()
    bad: list[tuple[bytes, str]] = [
        (b"not json at all", "invalid-json"),
        (b"\xff\xfe{}", "not-utf8"),
        (b"[1, 2]", "not-object"),
        (b'{"actor": {"id": "x"}}', "missing-verb"),
        (b'{"verb": ""}', "missing-verb"),
    ]
    good = event()
    with TopicReader(servers, f"{topic}-failed", f"{topic}-results") as reader:
        run_one(
            servers,
            topic,
            router,
            [handler("m", topic, model.port)],
            [*(raw for raw, _ in bad), good],
        )
        failed = reader.wait_for(f"{topic}-failed", len(bad))
        reader.wait_for(f"{topic}-results", 1)
    by_offset = sorted(failed, key=lambda r: int(r.headers["logistik.source"].split("/")[2]))
    assert [(r.value, r.headers["logistik.reason"]) for r in by_offset] == bad
    assert all(r.headers["logistik.error"] for r in failed)
    assert model.ids() == [good["id"]]


def test_missing_id_and_published_are_added(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    model = model_server()
    run_one(
        servers,
        topic,
        router,
        [handler("m", topic, model.port)],
        [{"verb": "detect", "actor": {"id": "a"}}, {"id": "keep-me", "verb": "detect"}],
    )
    first, second = sorted(model.requests, key=lambda r: r["id"] != "keep-me")[::-1]
    assert len(first["id"]) == 36 and first["id"].count("-") == 4
    assert datetime.fromisoformat(first["published"]).tzinfo is not None
    assert second["id"] == "keep-me"


def test_replicas_share_the_load_and_never_both_answer(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    replicas = [model_server(always(Reply(200, {"r": i}, delay_s=0.02))) for i in range(2)]
    handlers = [handler("face", topic, r.port, node=str(i)) for i, r in enumerate(replicas)]
    sent = [event() for _ in range(60)]
    with TopicReader(servers, f"{topic}-results") as reader:
        run_one(servers, topic, router, handlers, sent)
        records = reader.wait_for(f"{topic}-results", 60)
    assert len(records) == 60
    assert sorted(r.headers["logistik.event_id"] for r in records) == sorted(e["id"] for e in sent)
    counts = [r.count for r in replicas]
    assert sum(counts) == 60
    assert min(counts) >= 15, counts


def test_retry_fails_over_to_a_healthy_replica(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    broken = model_server(always(Reply(503)))
    healthy = model_server()
    handlers = [
        handler("face", topic, broken.port, node="0", retries=1),
        handler("face", topic, healthy.port, node="1", retries=1),
    ]
    sent = [event() for _ in range(20)]
    with TopicReader(servers, f"{topic}-results") as reader:
        run_one(servers, topic, router, handlers, sent)
        records = reader.wait_for(f"{topic}-results", 20)
    assert {r.headers["logistik.node_id"] for r in records} == {"face-127.0.0.1-model-1"}
    assert sorted(healthy.ids()) == sorted(e["id"] for e in sent)
    assert end_offsets(servers, f"{topic}-failed") == [0]


def test_slow_group_does_not_hold_back_a_fast_one(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    gate = threading.Event()
    slow = model_server(lambda ev, n: Reply(200, {"slow": ev["id"]}, gate=gate))
    fast = model_server()
    handlers = [
        handler("slow", topic, slow.port, return_to=f"{topic}-slow", timeout=60),
        handler("fast", topic, fast.port),
    ]
    sent = [event() for _ in range(10)]
    create_topics(servers, f"{topic}-slow")
    try:
        with TopicReader(servers, f"{topic}-results", f"{topic}-slow") as reader:
            router(make_config(servers, handlers))
            produce(servers, topic, sent)
            fast_records = reader.wait_for(f"{topic}-results", 10)
            # Every fast answer is out while the slow model has answered nothing; its calls
            # reach it in their own time (all ten wait there at once, none was held back).
            assert reader.on(f"{topic}-slow") == []
            wait_until(lambda: slow.active == 10, 30, "all ten slow calls to wait at the model")
            gate.set()
            reader.wait_for(f"{topic}-slow", 10)
    finally:
        gate.set()
    assert {r.json()["id"] for r in fast_records} == {e["id"] for e in sent}


def test_channel_events_reach_only_the_named_groups(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    fsk, other = model_server(), model_server()
    handlers = [handler("fsk", topic, fsk.port), handler("other", topic, other.port)]
    to_fsk = event(target={"objectType": "channel", "content": '["fsk"]'})
    to_fsk_list = event(target={"objectType": "channel", "content": ["fsk"]})
    to_all = event(target={"objectType": "channel", "content": '[""]'})
    malformed = event(target={"objectType": "channel", "content": "[fsk"})
    run_one(servers, topic, router, handlers, [to_fsk, to_fsk_list, to_all, malformed])
    assert sorted(fsk.ids()) == sorted(e["id"] for e in (to_fsk, to_fsk_list, to_all, malformed))
    assert sorted(other.ids()) == sorted(e["id"] for e in (to_all, malformed))


def test_bounded_work_under_a_slow_model(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    model = model_server(always(Reply(200, {"ok": 1}, delay_s=0.05)))
    config = make_config(
        servers,
        [handler("m", topic, model.port)],
        routing={"max_in_flight": 8, "max_concurrency_per_handler": 3},
    )
    running = router(config)
    produce(servers, topic, [event() for _ in range(80)])
    wait_all_committed(servers, config["kafka"]["group_id"], topic, 80)
    assert model.count == 80
    assert model.peak_active <= 3
    assert running.runner is not None
    assert running.runner.peak_in_flight <= 8


def test_retry_records_survive_a_restart_with_auto_offset_reset_latest(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    # A retry topic's partition on which the group has committed nothing yet (its records not
    # due when the router stopped) is read from its start whatever `auto_offset_reset` says:
    # "latest" would skip every record written before the next router took it.
    fails_once = fail_first(1, Reply(503, {"error": "busy"}))

    def behaviour(ev: dict[str, Any], count: int) -> Reply:
        return echo(ev, count) if ev["actor"]["id"] == "probe" else fails_once(ev, count)

    model = model_server(behaviour)
    config = make_config(
        servers,
        [handler("m", topic, model.port)],
        kafka={"auto_offset_reset": "latest"},
        # Retries due 5-10 s later: a stop slowed by a loaded machine still comes first.
        routing={"backoff_base_s": 10, "backoff_cap_s": 10},
    )
    lane = retry_topic(topic, "m")
    sent = [event(actor=f"a{i}") for i in range(20)]
    probed_at = [0.0]

    def held() -> bool:
        # "latest" skips what was written before the router held the topic: probes, sent
        # until one is answered, show that it holds it.
        if model.count == 0 and time.monotonic() - probed_at[0] > 0.5:
            produce(servers, topic, [event(actor="probe")])
            probed_at[0] = time.monotonic()
        return model.count > 0

    with TopicReader(servers, f"{topic}-results", lane) as reader:
        first = router(config)
        wait_until(held, 30, "the router to hold the topic")
        produce(servers, topic, sent)
        wait_until(lambda: len(reader.on(lane)) >= len(sent), 30, "every event on the retry topic")
        first.stop()
        ids = {e["id"] for e in sent}

        def answered() -> set[str]:
            return {str(r.json()["id"]) for r in reader.on(f"{topic}-results")} & ids

        assert not answered(), "a retry was due before the stop"
        router(config)
        wait_until(lambda: answered() == ids, 30, "every event answered after the restart")


def test_retry_group_starts_where_the_events_group_committed_the_retry_topic(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    # Routers before the retry topics had a group of their own committed them in the events'
    # group: the retry group starts where that group left off, so an upgrade neither calls
    # the retries it finished again nor skips those it had not.
    model = model_server()
    config = make_config(servers, [handler("m", topic, model.port)])
    lane = retry_topic(topic, "m")
    create_topics(servers, lane)
    sent = [event(actor=f"a{i}") for i in range(10)]
    for offset, ev in enumerate(sent):
        marks = {
            "logistik.retry_group": b"m",
            "logistik.attempt": b"1",
            "logistik.due_at": b"0",
            "logistik.source": f"{topic}/0/{offset}".encode(),
        }
        produce(servers, lane, [ev], headers=list(marks.items()))
    earlier = Consumer({"bootstrap.servers": servers, "group.id": config["kafka"]["group_id"]})
    try:
        earlier.commit(offsets=[TopicPartition(lane, 0, 6)], asynchronous=False)
    finally:
        earlier.close()
    with TopicReader(servers, f"{topic}-results") as reader:
        router(config)
        retries = retry_group(config["kafka"]["group_id"])
        wait_all_committed(servers, retries, lane, len(sent))
        answered = reader.wait_for(f"{topic}-results", 4)
    assert sorted(r.json()["id"] for r in answered) == sorted(e["id"] for e in sent[6:])
    assert model.count == 4

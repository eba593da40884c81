"""A bad model never stalls the good ones: faults injected while events flow, all counted."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from logistik.protocol import MAX_BUNDLE_EVENTS, RetryMarks, bundle_value, retry_topic
from tests.support.harness import RouterProcess, RouterThread, handler, make_config
from tests.support.kafkatools import (
    Record,
    TopicReader,
    create_topics,
    end_offsets,
    event,
    held_events,
    produce,
    unique,
)
from tests.support.models import ModelServer, Reply, echo, wait_until

StartModel = Callable[..., ModelServer]
StartRouter = Callable[[dict[str, Any]], RouterThread]
StartProcess = Callable[[dict[str, Any]], RouterProcess]


def hanging_until(healed: threading.Event) -> Callable[[dict[str, Any], int], Reply]:
    """A model that accepts every call and answers nothing until healed, then echoes."""
    return lambda ev, n: (
        echo(ev, n) if healed.is_set() else Reply(200, {"id": ev["id"], "late": True}, gate=healed)
    )


@contextlib.contextmanager
def healing(healed: threading.Event) -> Iterator[None]:
    """Heal the model at the end whatever happens, so that its held calls end."""
    try:
        yield
    finally:
        healed.set()


def beside_a_hanging_model(
    servers: str, prefix: str, hanging: ModelServer, fast: ModelServer
) -> tuple[str, dict[str, Any]]:
    """A fresh topic read by a hanging group and a fast one, and the config: a small in-flight
    budget and queues that would wait a minute, so that only the stall rule frees the budget."""
    topic = unique(prefix)
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed", f"{topic}-hang")
    config = make_config(
        servers,
        [
            handler("hang", topic, hanging.port, return_to=f"{topic}-hang", timeout=60),
            handler("fast", topic, fast.port),
        ],
        routing={"max_in_flight": 100, "max_concurrency_per_handler": 4, "max_queue_wait_s": 60},
    )
    return topic, config


def bundled(reader: TopicReader, lane: str) -> int:
    """How many events the retry topic `lane` holds in bundles."""
    return sum(len(held_events(r)) for r in reader.on(lane) if "logistik.bundle" in r.headers)


def by_group(records: list[Record]) -> Counter[str]:
    """How many answers each group published, by the node id in their headers."""
    return Counter(r.headers["logistik.node_id"].split("-")[0] for r in records)


def test_a_hanging_model_holds_neither_its_topic_nor_another(
    servers: str, model_server: StartModel, router: StartRouter
) -> None:
    shared, other = unique("shared"), unique("other")
    create_topics(servers, shared, f"{shared}-results", f"{shared}-failed")
    create_topics(servers, other, f"{other}-results", f"{other}-failed")
    healed = threading.Event()
    hanging, fast, elsewhere = (
        model_server(hanging_until(healed)),
        model_server(),
        model_server(),
    )
    config = make_config(
        servers,
        [
            handler("hang", shared, hanging.port, timeout=2, retries=2),
            handler("fast", shared, fast.port),
            handler("elsewhere", other, elsewhere.port),
        ],
        routing={"max_in_flight": 200, "max_concurrency_per_handler": 8},
    )
    running = router(config)
    events_shared = [event(actor=f"a{i}") for i in range(300)]
    events_other = [event(actor=f"b{i}") for i in range(100)]
    results = (f"{shared}-results", f"{other}-results")
    with TopicReader(servers, *results, f"{shared}-failed") as reader, healing(healed):
        started = time.monotonic()
        produce(servers, shared, events_shared)
        produce(servers, other, events_other)
        # While the model hangs, the healthy groups answer everything, on both topics.
        wait_until(
            lambda: (
                by_group(reader.on(results[0]))["fast"] == 300 and len(reader.on(results[1])) == 100
            ),
            30,
            "the healthy groups' answers while a model hangs",
        )
        healthy_s = time.monotonic() - started
        assert not healed.is_set()
        assert by_group(reader.on(results[0]))["hang"] == 0
        assert running.runner is not None
        live = running.runner.registry.instance("hang-127.0.0.1-model-0")
        assert live is not None
        wait_until(lambda: live.circuit != "closed", 15, "the hanging model's circuit to open")

        healed.set()

        def accounted() -> bool:
            answered = {
                r.json()["id"]
                for r in reader.on(results[0])
                if "hang" in r.headers["logistik.node_id"]
            }
            failed = {r.headers["logistik.event_id"] for r in reader.on(f"{shared}-failed")}
            return len(answered | failed) == 300

        wait_until(accounted, 60, "every event of the hanging group answered or failed")
    answers = [r for r in reader.on(results[0]) if r.headers["logistik.node_id"].startswith("hang")]
    failed = reader.on(f"{shared}-failed")
    sent = {e["id"] for e in events_shared}
    answered = {r.json()["id"] for r in answers}
    failed_ids = {r.headers["logistik.event_id"] for r in failed}
    assert {r.headers["logistik.group"] for r in failed} <= {"hang"}
    assert answered | failed_ids == sent  # lost: 0
    assert {r.json()["id"] for r in reader.on(results[1])} == {e["id"] for e in events_other}
    fast_ids = [
        r.json()["id"]
        for r in reader.on(results[0])
        if r.headers["logistik.node_id"].startswith("fast")
    ]
    assert sorted(fast_ids) == sorted(sent)  # no duplicates without a crash
    print(
        f"hanging model: healthy groups done in {healthy_s:.1f} s; hang group answered "
        f"{len(answered)}, failed {len(failed_ids)}, duplicated {len(answers) - len(answered)}"
    )


def test_a_model_that_stops_answering_gives_its_queue_to_the_retry_topic_at_once(
    servers: str, model_server: StartModel, router: StartRouter
) -> None:
    # Queued calls would wait up to 30 s (half the timeout) before the retry topic: only the
    # stall rule can free the in-flight budget for the fast group within the test's wait.
    healed = threading.Event()
    hanging = model_server(hanging_until(healed))
    topic, config = beside_a_hanging_model(servers, "stall", hanging, model_server())
    sent = [event() for _ in range(600)]
    ids = {e["id"] for e in sent}
    lane = retry_topic(topic, "hang")
    with (
        TopicReader(servers, f"{topic}-results", f"{topic}-hang", lane) as reader,
        healing(healed),
    ):
        running = router(config)
        produce(servers, topic, sent)
        reader.wait_for(f"{topic}-results", 600, timeout_s=20, context=running.describe)
        # Every fast answer is out while the hanging model holds its four calls.
        assert reader.on(f"{topic}-hang") == []
        assert hanging.active == 4
        assert running.runner is not None
        assert running.runner.figures.deferred[topic] >= 500
        healed.set()
        wait_until(
            lambda: {r.json()["id"] for r in reader.on(f"{topic}-hang")} == ids,
            60,
            "every event answered by the model that hung, from its retry topic",
        )
        # Its new events waited in bundles, several to a record.
        held = reader.on(lane)
    assert sorted(r.json()["id"] for r in reader.on(f"{topic}-results")) == sorted(ids)
    assert end_offsets(servers, f"{topic}-failed") == [0]
    assert max(int(r.headers.get("logistik.bundle", "1")) for r in held) > 1
    assert {e["id"] for r in held for _, e in held_events(r)} <= ids


@pytest.mark.one_broker
def test_kill_9_while_a_busy_groups_events_wait_in_bundles_loses_none(
    servers: str, model_server: StartModel, router_process: StartProcess
) -> None:
    healed = threading.Event()
    hanging = model_server(hanging_until(healed))
    topic, config = beside_a_hanging_model(servers, "bundles", hanging, model_server())
    lane = retry_topic(topic, "hang")
    sent = [event() for _ in range(600)]
    ids = {e["id"] for e in sent}
    with TopicReader(servers, f"{topic}-results", f"{topic}-hang", lane) as reader, healing(healed):
        first = router_process(config)
        produce(servers, topic, sent)
        reader.wait_for(f"{topic}-results", 600, timeout_s=30)
        wait_until(lambda: bundled(reader, lane) >= 300, 20, "the hung model's events bundled")
        first.kill()
        assert first.wait(10) == -signal.SIGKILL, first.log()[-3000:]
        healed.set()
        second = router_process(config)
        wait_until(
            lambda: {r.json()["id"] for r in reader.on(f"{topic}-hang")} >= ids,
            90,
            "every event answered by the model that hung, after the restart",
        )
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0, second.log()[-3000:]
    # Lost: none. Every event answered by both groups (some twice: at least once).
    assert {r.json()["id"] for r in reader.on(f"{topic}-results")} == ids
    assert {r.json()["id"] for r in reader.on(f"{topic}-hang")} == ids
    assert end_offsets(servers, f"{topic}-failed") == [0]


def test_a_groups_retry_budget_holds_when_bundles_come_a_hundred_at_a_time(
    servers: str, model_server: StartModel, router: StartRouter
) -> None:
    # A poll takes up to 500 retry records and a bundle holds up to 100 events: records past
    # the budget must wait in Kafka (read again once there is room), not in memory.
    healed = threading.Event()
    hanging = model_server(hanging_until(healed))
    topic, config = beside_a_hanging_model(servers, "budget", hanging, model_server())
    config["routing"]["max_waiting_retries"] = 150
    lane = retry_topic(topic, "hang")
    create_topics(servers, lane)
    sent = [event() for _ in range(600)]
    ids = {e["id"] for e in sent}
    # Six bundles of 100, all due, on the retry topic before the router starts: its first poll
    # can take them all at once.
    for first in range(0, 600, 100):
        entries = [(n, orjson.dumps(sent[n])) for n in range(first, first + 100)]
        marks = RetryMarks("hang", 0, 0, topic, 0, first, bundle=100)
        produce(servers, lane, [bundle_value(entries)], headers=marks.headers())
    with TopicReader(servers, f"{topic}-hang") as reader, healing(healed):
        running = router(config)
        assert running.runner is not None
        loop = running.runner.loop
        assert loop is not None
        wait_until(lambda: lane in loop._paused_lanes, 30, "the full group's retry topic paused")
        assert 150 <= loop._lane_waiting[lane] < 150 + MAX_BUNDLE_EVENTS
        healed.set()
        # The records left in Kafka are read again once there is room: every event answered.
        wait_until(
            lambda: {r.json()["id"] for r in reader.on(f"{topic}-hang")} >= ids,
            90,
            "every event answered by the model that hung, from its retry topic",
        )


def test_a_shed_groups_retry_topic_takes_only_what_its_model_can_start(
    servers: str, model_server: StartModel, router: StartRouter
) -> None:
    # While the hanging group is shed its events wait in Kafka, not in the router's memory:
    # its retry topic takes one bundle past what its four slots can start, not the whole
    # max_waiting_retries (2,000), and the fast group goes on meanwhile.
    healed = threading.Event()
    hanging = model_server(hanging_until(healed))
    topic, config = beside_a_hanging_model(servers, "shedbudget", hanging, model_server())
    lane = retry_topic(topic, "hang")
    sent = [event() for _ in range(1500)]
    ids = {e["id"] for e in sent}
    with (
        TopicReader(servers, f"{topic}-results", f"{topic}-hang", lane) as reader,
        healing(healed),
    ):
        running = router(config)
        assert running.runner is not None
        loop = running.runner.loop
        assert loop is not None
        produce(servers, topic, sent)
        reader.wait_for(f"{topic}-results", 1500, timeout_s=30, context=running.describe)
        wait_until(lambda: bundled(reader, lane) >= 1400, 20, "its events in bundles")
        wait_until(lambda: lane in loop._paused_lanes, 20, "the shed group's retry topic paused")
        assert MAX_BUNDLE_EVENTS <= loop._lane_waiting[lane] < 2 * MAX_BUNDLE_EVENTS
        assert loop.retry_budget == 2000
        healed.set()
        wait_until(
            lambda: {r.json()["id"] for r in reader.on(f"{topic}-hang")} == ids,
            90,
            "every event answered by the model that hung, from its retry topic",
        )
    assert sorted(r.json()["id"] for r in reader.on(f"{topic}-results")) == sorted(ids)
    assert end_offsets(servers, f"{topic}-failed") == [0]


def test_a_model_that_answers_nothing_gives_up_its_queue_before_the_budget_fills(
    servers: str, model_server: StartModel, router: StartRouter
) -> None:
    # 80 events against a budget of 100: it never fills, yet the hanging model's queue leaves
    # once three quarters of it wait on that model, before the fast one stands idle behind it.
    healed = threading.Event()
    hanging = model_server(hanging_until(healed))
    topic, config = beside_a_hanging_model(servers, "early", hanging, model_server())
    sent = [event() for _ in range(80)]
    ids = {e["id"] for e in sent}
    with TopicReader(servers, f"{topic}-results", f"{topic}-hang") as reader, healing(healed):
        running = router(config)
        assert running.runner is not None
        produce(servers, topic, sent)
        reader.wait_for(f"{topic}-results", 80, timeout_s=20, context=running.describe)
        figures = running.runner.figures
        wait_until(lambda: figures.deferred[topic] == 76, 20, "the queue of 76 passed on")
        assert hanging.active == 4
        healed.set()
        wait_until(
            lambda: {r.json()["id"] for r in reader.on(f"{topic}-hang")} == ids,
            60,
            "every event answered by the model that hung",
        )
    assert end_offsets(servers, f"{topic}-failed") == [0]

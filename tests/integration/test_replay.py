"""`logistik replay`: failed events go back to the groups that failed them, once, with a count."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from logistik.kafka.embedded import free_port
from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import (
    Record,
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
NODE_A = "a-127.0.0.1-model-0"
NODE_B = "b-127.0.0.1-model-0"


def run_replay(
    servers: str, *args: str, group_id: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the replay command against the test broker, with a fresh consumer group by default."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "logistik.commands.replay",
            *args,
            "--bootstrap-servers",
            servers,
            "--group-id",
            group_id or unique("replay"),
            "--idle-s",
            "0.5",
            "--timeout-s",
            "40",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def failing_until(fixed: threading.Event) -> Callable[[dict[str, Any], int], Reply]:
    """A model that answers HTTP 500 until `fixed` is set, then echoes."""
    return lambda ev, n: echo(ev, n) if fixed.is_set() else Reply(500, raw=b"model broken")


def routed(servers: str, router: StartRouter, handlers: list[dict[str, Any]], topic: str) -> str:
    """Start a router on `topic` and return its consumer group."""
    config = make_config(servers, handlers)
    router(config)
    return str(config["kafka"]["group_id"])


@pytest.fixture
def topic(servers: str) -> str:
    """A fresh topic with its results and failed topics, one partition each."""
    name = unique("events")
    create_topics(servers, name, f"{name}-results", f"{name}-failed")
    return name


def test_replay_goes_only_to_the_group_that_failed_and_only_once(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    fixed = threading.Event()
    model_a, model_b = model_server(failing_until(fixed)), model_server()
    handlers = [
        handler("a", topic, model_a.port, retries=0),
        handler("b", topic, model_b.port, retries=0),
    ]
    group = routed(servers, router, handlers, topic)
    sent = [event(actor=f"actor-{i}") for i in range(3)]
    with TopicReader(servers, topic, f"{topic}-results", f"{topic}-failed") as reader:
        produce(servers, topic, sent)
        failed = reader.wait_for(f"{topic}-failed", 3)
        wait_all_committed(servers, group, topic, 3)
        assert {r.headers["logistik.group"] for r in failed} == {"a"}
        assert (model_a.count, model_b.count) == (3, 3)
        fixed.set()

        check_dry_run(servers, topic, sent, (model_a, model_b))
        group_id = unique("replay")
        first = run_replay(servers, f"{topic}-failed", group_id=group_id)
        assert first.returncode == 0, first.stderr
        assert first.stderr == f"replayed 3 of 3 record(s) from {topic}-failed\n"
        wait_all_committed(servers, group, topic, 6)
        results = reader.wait_for(f"{topic}-results", 6)
        replayed = wait_replayed(reader, topic, 3)
        second = run_replay(servers, f"{topic}-failed", group_id=group_id)
    assert second.returncode == 0, second.stderr
    assert second.stderr == f"replayed 0 of 0 record(s) from {topic}-failed\n"
    assert (model_a.count, model_b.count) == (6, 3)  # B was not asked again
    answers = [r for r in results if r.headers["logistik.node_id"] == NODE_A]
    assert sorted(r.json()["id"] for r in answers) == sorted(e["id"] for e in sent)
    assert {r.key for r in answers} == {e["actor"]["id"].encode() for e in sent}
    assert len(replayed) == 3
    for record in replayed:
        assert record.headers["logistik.replay_groups"] == "a"
        assert record.headers["logistik.replays"] == "1"
        assert record.key == record.json()["actor"]["id"].encode()


def check_dry_run(
    servers: str, topic: str, sent: list[dict[str, Any]], models: tuple[ModelServer, ...]
) -> None:
    """A dry run lists what it would send, and sends nothing."""
    before, calls = end_offsets(servers, topic), [m.count for m in models]
    dry = run_replay(servers, f"{topic}-failed", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stderr.splitlines()[0] == f"would replay 3 of 3 record(s) from {topic}-failed"
    assert all(e["id"] in dry.stdout for e in sent) and "retries-exhausted" in dry.stdout
    assert end_offsets(servers, topic) == before  # nothing produced
    assert [m.count for m in models] == calls


# The replay command's own rules, the same on every broker (the first test runs on both).
@pytest.mark.one_broker
def test_an_event_failing_again_counts_its_replays_until_given_up(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    model = model_server(lambda ev, n: Reply(500, raw=b"still broken"))
    group = routed(servers, router, [handler("a", topic, model.port, retries=0)], topic)
    sent = [event(), event()]
    group_id = unique("replay")
    with TopicReader(servers, topic, f"{topic}-failed") as reader:
        produce(servers, topic, sent)
        wait_all_committed(servers, group, topic, 2)  # routed: never delivered again
        reader.wait_for(f"{topic}-failed", 2)
        first = run_replay(servers, f"{topic}-failed", group_id=group_id)
        assert first.returncode == 0, first.stderr
        assert first.stderr == f"replayed 2 of 2 record(s) from {topic}-failed\n"
        wait_all_committed(servers, group, topic, 4)
        again = reader.wait_for(f"{topic}-failed", 4)[2:]
        assert {r.json()["id"] for r in again} == {e["id"] for e in sent}
        assert {r.headers["logistik.replays"] for r in again} == {"1"}
        assert {r.headers["logistik.group"] for r in again} == {"a"}
        before = end_offsets(servers, topic)
        last = run_replay(servers, f"{topic}-failed", "--max-replays", "1", group_id=group_id)
    assert last.returncode == 0, last.stderr
    summary, hint = last.stderr.splitlines()
    assert summary == (f"replayed 0 of 2 record(s) from {topic}-failed: 2 given up after 1 replays")
    assert hint.startswith("hint: 2 record(s) failed again after 1 replay(s)")
    assert "--max-replays 2" in hint
    assert end_offsets(servers, topic) == before
    assert model.count == 4


def since_now() -> str:
    """Now, as --since takes it, once the clock has moved past the millisecond it names."""
    now = datetime.now(UTC)
    wait_until(lambda: datetime.now(UTC) > now + timedelta(milliseconds=2), what="the clock")
    return now.isoformat()


def replayed_ids(output: str, sent: dict[str, dict[str, Any]]) -> set[str]:
    """The names of the events whose ids a dry run's table shows."""
    return {name for name, ev in sent.items() if ev["id"] in output}


@pytest.mark.one_broker
def test_filters_and_records_that_are_not_events(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    rejecting = model_server(lambda ev, n: Reply(400 if ev["verb"] == "bad" else 500))
    failing = model_server(lambda ev, n: Reply(500))
    handlers = [
        handler("a", topic, rejecting.port, retries=0),
        handler("b", topic, failing.port, retries=0),
    ]
    group = routed(servers, router, handlers, topic)
    sent = {"early": event(), "bad": event(verb="bad")}
    with TopicReader(servers, topic, f"{topic}-failed") as reader:
        produce(servers, topic, [sent["early"], sent["bad"], b"not json"])
        wait_all_committed(servers, group, topic, 3)
        reader.wait_for(f"{topic}-failed", 5)
        since = since_now()
        sent["late"] = event()
        produce(servers, topic, [sent["late"]])
        wait_all_committed(servers, group, topic, 4)
        failed = reader.wait_for(f"{topic}-failed", 7)
        assert sorted(r.headers["logistik.reason"] for r in failed) == [
            "invalid-json",
            "rejected",
            *["retries-exhausted"] * 5,
        ]
        runs = [("--reason", "rejected"), ("--since", since), (), ("--include-invalid",)]
        with ThreadPoolExecutor(len(runs)) as pool:
            dry = list(
                pool.map(lambda a: run_replay(servers, f"{topic}-failed", "--dry-run", *a), runs)
            )
        by_handler = run_replay(servers, f"{topic}-failed", "--handler", NODE_A)
        replayed = wait_replayed(reader, topic, 3)
    assert all(r.returncode == 0 for r in dry), [r.stderr for r in dry]
    reason, since_run, everything, invalid = (r.stderr.splitlines() for r in dry)
    prefix = f"would replay {{}} of 7 record(s) from {topic}-failed"
    assert reason == [prefix.format(1) + ": 6 skipped by filter"]
    assert replayed_ids(dry[0].stdout, sent) == {"bad"}
    assert since_run == [prefix.format(2) + ": 5 skipped by filter"]
    assert replayed_ids(dry[1].stdout, sent) == {"late"}
    assert everything[0] == prefix.format(6) + ": 1 skipped as not an event"
    assert everything[1].startswith("hint: ") and "--include-invalid" in everything[1]
    assert invalid == [prefix.format(7)]
    assert by_handler.returncode == 0, by_handler.stderr
    assert (
        by_handler.stderr == f"replayed 3 of 7 record(s) from {topic}-failed: 4 skipped by filter\n"
    )
    assert {r.json()["id"] for r in replayed} == {e["id"] for e in sent.values()}
    assert {r.headers["logistik.replay_groups"] for r in replayed} == {"a"}


def wait_replayed(reader: TopicReader, topic: str, count: int) -> list[Record]:
    """Wait for `count` replayed records on the source topic and return them."""
    wait_until(lambda: len(replayed_on(reader, topic)) >= count, what="replayed records")
    return replayed_on(reader, topic)


def replayed_on(reader: TopicReader, topic: str) -> list[Record]:
    """The records of a topic that replay sent."""
    return [r for r in reader.on(topic) if "logistik.replays" in r.headers]


@pytest.mark.one_broker
def test_absent_broker_and_absent_topic_are_one_line(servers: str) -> None:
    port = free_port()
    absent = subprocess.run(
        [
            sys.executable,
            "-m",
            "logistik.commands.replay",
            "t-failed",
            "--bootstrap-servers",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert absent.returncode == 1
    assert absent.stdout == ""
    assert absent.stderr.startswith(f"logistik: cannot reach the Kafka broker at 127.0.0.1:{port}")
    assert len(absent.stderr.splitlines()) == 1
    name = unique("nothing")
    missing = run_replay(servers, f"{name}-failed")
    assert missing.returncode == 1
    assert missing.stderr == f"logistik: topic '{name}-failed' does not exist on {servers}\n"

"""`logistik run` as a real process: config errors, SIGTERM drain, kill -9 with nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from logistik.kafka.embedded import EmbeddedBroker, free_port
from tests.support.harness import RouterProcess, RouterThread, handler, make_config
from tests.support.kafkatools import (
    TopicReader,
    committed_offsets,
    create_topics,
    event,
    produce,
    unique,
)
from tests.support.models import ModelServer, Reply, wait_until

StartProcess = Callable[[dict[str, Any]], RouterProcess]


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the logistik command and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "logistik", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_unknown_config_key_is_one_line_naming_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kafka:\n  bootstrap_server: 127.0.0.1:9092\n")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"logistik: {path}: unknown key 'kafka.bootstrap_server' "
        "(did you mean 'bootstrap_servers'?)\n"
    )


def test_wrong_handler_value_names_the_handler_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "discovery:\n  handlers:\n    - {name: a, event: t, endpoint: h, "
        "port: 70000, return_to: r}\n"
    )
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"logistik: {path}: discovery.handlers[0].port: ")
    assert "Traceback" not in result.stderr


def test_missing_environment_variable_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("kafka:\n  bootstrap_servers: ${LK_TEST_UNSET_BROKER}\n")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"logistik: {path}: kafka.bootstrap_servers: environment variable "
        "LK_TEST_UNSET_BROKER is not set\n"
    )
    missing = run_cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"logistik: {tmp_path / 'nope.yaml'}: config file not found;")
    assert "`logistik init`" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_an_absent_broker_is_waited_for_in_one_line_until_sigterm(tmp_path: Path) -> None:
    servers = f"127.0.0.1:{free_port()}"
    running = RouterProcess(make_config(servers, [handler("a", "t", 9)]), tmp_path).start()
    try:
        wait_until(lambda: "waiting for the Kafka broker" in running.log(), 30, "the waiting line")
        running.signal(signal.SIGTERM)
        assert running.wait(30) == 0
    finally:
        running.kill()
    problems = [line for line in running.log().splitlines() if " INFO " not in line]
    [line, stopped] = problems  # one line while waiting, one saying the stop came mid start-up
    assert stopped == "logistik: stopped during start-up"
    assert f"waiting for the Kafka broker (cannot reach the Kafka broker at {servers}" in line
    assert line.endswith("retrying with back-off")


def test_sigterm_drains_in_flight_events_commits_and_exits_zero(
    servers: str, model_server: Callable[..., ModelServer], router_process: StartProcess
) -> None:
    topic = unique("events")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    model = model_server(lambda ev, n: Reply(200, {"id": ev["id"]}, delay_s=0.5))
    config = make_config(servers, [handler("m", topic, model.port)], routing={"max_in_flight": 4})
    sent = [event() for _ in range(20)]
    produce(servers, topic, sent)
    with TopicReader(servers, f"{topic}-results") as reader:
        first = router_process(config)
        wait_until(lambda: model.count >= 5, what="calls in flight")
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.log()
        log = first.log()
        assert "stopping: waiting up to 10 s for" in log
        assert "stopped: offsets of finished events committed" in log
        answered = {r.json()["id"] for r in reader.wait_for(f"{topic}-results", model.count)}
        # Every call that was in flight at SIGTERM finished and was published before exit ...
        assert answered == set(model.ids())
        assert len(answered) < len(sent)
        # ... and committed: a second process takes over exactly where the first one stopped.
        assert committed_offsets(servers, config["kafka"]["group_id"], topic) == [len(answered)]
        second = router_process(config)
        records = reader.wait_for(f"{topic}-results", len(sent))
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
    ids = Counter(r.json()["id"] for r in records)
    assert set(ids) == {e["id"] for e in sent}
    assert max(ids.values()) == 1  # a graceful stop duplicates nothing


def test_kill_9_mid_stream_loses_nothing(
    servers: str, model_server: Callable[..., ModelServer], router_process: StartProcess
) -> None:
    topic = unique("events")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed", partitions=3)
    # Past its 100th call the model holds its answers until the kill, so that the stream
    # cannot finish first, however fast the router and however slow the reader to start.
    held = threading.Event()
    model = model_server(
        lambda ev, n: Reply(200, {"id": ev["id"]}, delay_s=0.01, gate=held if n > 100 else None)
    )
    config = make_config(servers, [handler("m", topic, model.port)], routing={"max_in_flight": 16})
    sent = [event(actor=f"actor-{i % 7}") for i in range(300)]
    with TopicReader(servers, f"{topic}-results", f"{topic}-failed") as reader:
        produce(servers, topic, sent)
        first = router_process(config)
        wait_until(lambda: len(reader.on(f"{topic}-results")) >= 60, what="first answers")
        first.kill()
        assert first.wait(10) == -signal.SIGKILL
        held.set()
        before = len(reader.on(f"{topic}-results"))
        assert before < len(sent), "the stream finished before the kill; nothing was tested"
        second = router_process(config)
        wait_until(
            lambda: (
                {r.json()["id"] for r in reader.on(f"{topic}-results")} >= {e["id"] for e in sent}
            ),
            timeout_s=60,
            what="every event answered",
        )
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
        assert reader.on(f"{topic}-failed") == []


def test_send_validates_every_line_before_sending(servers: str, tmp_path: Path) -> None:
    topic = unique("send")
    create_topics(servers, topic)
    lines = tmp_path / "events.jsonl"
    lines.write_text('{"verb": "a", "actor": {"id": "x"}}\n{"actor": {"id": "y"}}\n')
    bad = run_cli("send", topic, str(lines), "--bootstrap-servers", servers)
    assert bad.returncode == 1
    assert bad.stderr == (f"logistik: {lines}:2: the event has no 'verb'; nothing was sent\n")
    lines.write_text('{"verb": "a", "actor": {"id": "x"}}\n\n{"verb": "b", "id": "e2"}\n')
    good = run_cli("send", topic, str(lines), "--bootstrap-servers", servers)
    assert good.returncode == 0, good.stderr
    assert good.stderr == f"sent 2 event(s) to {topic}\n"
    with TopicReader(servers, topic) as reader:
        records = reader.wait_for(topic, 2)
    assert [r.json()["verb"] for r in records] == ["a", "b"]
    assert records[0].key == b"x" and records[1].json()["id"] == "e2"


def test_send_finds_the_embedded_broker_named_in_the_config(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topic = unique("send-embedded")
    create_topics(broker.bootstrap_servers, topic)
    config = tmp_path / "logistik.yaml"
    config.write_text(f"kafka:\n  bootstrap_servers: embedded\n  embedded_port: {broker.port}\n")
    lines = tmp_path / "events.jsonl"
    lines.write_text('{"verb": "a", "actor": {"id": "x"}}\n')
    result = run_cli("send", topic, str(lines), "--config", str(config), "--timeout-s", "10")
    assert result.returncode == 0, result.stderr
    # (A warning follows: no handler of that config reads the topic.)
    assert result.stderr.splitlines()[0] == f"sent 1 event(s) to {topic}"
    with TopicReader(broker.bootstrap_servers, topic) as reader:
        [record] = reader.wait_for(topic, 1)
    assert record.key == b"x" and record.json()["verb"] == "a"


def test_send_to_an_absent_broker_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "logistik",
            "send",
            "t",
            "-",
            "--bootstrap-servers",
            f"127.0.0.1:{port}",
            "--timeout-s",
            "2",
        ],
        input='{"verb": "a"}\n',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"logistik: 1 event(s) not acknowledged by 127.0.0.1:{port} within 2 s "
        "(is the broker running?)"
    )


def kafka_client_threads() -> int:
    """How many librdkafka clients this process holds: each has one main thread."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                count += comm.read().strip() == "rdk:main"
        except OSError:  # the thread ended meanwhile
            continue
    return count


def test_a_stopped_router_leaves_no_kafka_client_behind(
    servers: str, model_server: Callable[..., ModelServer]
) -> None:
    # A process that stops and starts routing again (an embedding application, a test suite)
    # must not keep each stopped router's clients: every one holds threads and connections.
    topic = unique("events")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    model = model_server()
    config = make_config(servers, [handler("m", topic, model.port)])
    before = kafka_client_threads()
    with TopicReader(servers, f"{topic}-results") as reader:
        running = RouterThread(config).start()
        try:
            produce(servers, topic, [event()])
            reader.wait_for(f"{topic}-results", 1)
            assert kafka_client_threads() > before
        finally:
            running.stop()
    # At most as many as before: a client of an earlier test may have finished closing since.
    wait_until(lambda: kafka_client_threads() <= before, 10, "the router's Kafka clients gone")

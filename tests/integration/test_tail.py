"""`logistik tail`: records of a topic printed as JSON lines or pretty, without a consumer group."""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from logistik.commands.tail import OlderRecords, follow
from logistik.config import KafkaConfig
from logistik.kafka import command_consumer_config
from logistik.kafka.embedded import free_port
from logistik.protocol import FailedRecord, Reason
from tests.support.kafkatools import create_topics, event, unique
from tests.support.models import wait_until

TAIL = [sys.executable, "-m", "logistik.commands.tail"]


def run_tail(servers: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the tail command against the test broker and capture what it prints."""
    return subprocess.run(
        [*TAIL, *args, "--bootstrap-servers", servers],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def produce_records(servers: str, topic: str, records: list[dict[str, Any]]) -> None:
    """Produce records given as produce() keyword arguments, and wait for the broker."""
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 1})
    for record in records:
        producer.produce(topic, **record)
    assert producer.flush(20) == 0


def test_json_lines_with_headers_and_parsed_values(servers: str) -> None:
    topic = unique("tail")
    create_topics(servers, topic)
    first = event(actor="me")
    produce_records(
        servers,
        topic,
        [
            {"value": orjson.dumps(first), "key": b"me", "headers": [("logistik.event_id", b"e1")]},
            {"value": b"\x00raw\xffbytes"},
            {"value": b"[1, 2]", "headers": [("trace", b"t-1")]},
            {"value": b'{"not": "printed"}'},
        ],
    )
    result = run_tail(servers, topic, "--from-beginning", "-n", "3", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [(r["topic"], r["partition"], r["offset"]) for r in lines] == [
        (topic, 0, 0),
        (topic, 0, 1),
        (topic, 0, 2),
    ]
    assert lines[0]["key"] == "me" and lines[1]["key"] is None
    assert lines[0]["headers"] == {"logistik.event_id": "e1"}
    assert lines[0]["value"] == first and lines[0]["value_format"] == "json"
    assert lines[1]["value"] == "\x00raw\\xffbytes" and lines[1]["value_format"] == "text"
    assert lines[2]["value"] == [1, 2] and lines[2]["headers"] == {"trace": "t-1"}
    assert all(r["timestamp"].endswith("+00:00") for r in lines)


def test_pretty_mode_shows_a_failed_records_reason_and_error(servers: str) -> None:
    topic = unique("tail")
    create_topics(servers, f"{topic}-failed")
    failed = event(actor="me")
    record = FailedRecord(
        topic,
        0,
        7,
        orjson.dumps(failed),
        Reason.RETRIES_EXHAUSTED,
        "HTTP 500: model broken",
        failed["id"],
        "face",
        ("face-h1-model-0",),
        3,
    )
    produce_records(
        servers,
        f"{topic}-failed",
        [
            {"value": record.value, "headers": record.headers()},
            {"value": b"\x01 not json", "key": b"k"},
        ],
    )
    result = run_tail(servers, f"{topic}-failed", "--from-beginning", "-n", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{topic}-failed[0]@0" in out and f"{topic}-failed[0]@1" in out
    assert "failed retries-exhausted  HTTP 500: model broken" in out
    assert f"source={topic}/0/7" in out and "group=face" in out and "retries=3" in out
    assert f'"id": "{failed["id"]}"' in out  # the value, pretty-printed
    assert "key=k" in out and "(not JSON, 10 bytes) \\x01 not json" in out


def test_only_new_records_without_from_beginning_and_ctrl_c_exits_zero(servers: str) -> None:
    topic = unique("tail")
    create_topics(servers, topic)
    produce_records(servers, topic, [{"value": b'{"old": true}'}])
    with subprocess.Popen(
        [*TAIL, topic, "--json", "--bootstrap-servers", servers],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as tail:
        assert tail.stdout is not None and tail.stderr is not None
        # The tail starts at the end once it is assigned: send until it prints one.
        line, sent = b"", 0
        while not line and sent < 100:
            produce_records(servers, topic, [{"value": orjson.dumps({"new": sent})}])
            sent += 1
            line = first_line_within(tail, 0.2)
        assert line, "tail printed nothing"
        assert "new" in orjson.loads(line)["value"]
        tail.send_signal(signal.SIGINT)
        assert tail.wait(20) == 0
        assert tail.stderr.read() == b""


def first_line_within(process: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """The first line the process printed, waiting up to timeout_s; b'' when none yet."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return b""
    return process.stdout.readline()


@pytest.mark.one_broker
def test_absent_broker_and_absent_topic_are_one_line(servers: str) -> None:
    port = free_port()
    absent = run_tail(f"127.0.0.1:{port}", "events")
    assert absent.returncode == 1
    assert absent.stdout == ""
    assert absent.stderr.startswith(f"logistik: cannot reach the Kafka broker at 127.0.0.1:{port}")
    assert len(absent.stderr.splitlines()) == 1
    name = unique("nothing")
    missing = run_tail(servers, name)
    assert missing.returncode == 1
    assert missing.stderr == f"logistik: topic '{name}' does not exist on {servers}\n"


def test_new_records_only_skips_the_rest_of_the_last_batch_written_before(
    servers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique("tail")
    create_topics(servers, topic)
    batching = Producer({"bootstrap.servers": servers, "linger.ms": 200})
    for index in range(5):  # one batch: Tansu reports its first offset + 1 as the end
        batching.produce(topic, orjson.dumps({"old": index}))
    assert batching.flush(20) == 0
    older = OlderRecords(int(time.time() * 1000))
    states: list[str] = []

    def fetch_state(stats: str) -> None:
        partitions = orjson.loads(stats)["topics"].get(topic, {}).get("partitions", {})
        states.append(partitions.get("0", {}).get("fetch_state", ""))

    settings = {"statistics.interval.ms": 50, "stats_cb": fetch_state}
    consumer = Consumer(
        command_consumer_config(KafkaConfig(bootstrap_servers=servers), "t", **settings)
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_END)])  # as the tail starts
        early: list[bytes | None] = []

        def fetching() -> bool:
            message = consumer.poll(0.05)
            if message is not None and not older.older(message):
                early.append(message.value())
            return message is None and states[-1:] == ["active"]

        # The end is resolved once the partition is fetched: only then is a new record sent.
        wait_until(fetching)
        produce_records(servers, topic, [{"value": b'{"new": 1}'}])
        follow(consumer, 1, True, older)
    finally:
        consumer.close()
    assert early == []
    [line] = capsys.readouterr().out.splitlines()
    assert orjson.loads(line)["value"] == {"new": 1}

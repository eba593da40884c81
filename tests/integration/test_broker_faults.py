"""Broker faults on Apache Kafka while events flow: every event accounted for, a fault table.

Each test runs a broker of its own (it is killed, frozen or started late) and reports one row of
the fault table: the fault; events sent; groups; (event, group) pairs answered, failed, lost and
answered more than once; and the seconds until an event sent after the fault was answered. The
rows are printed and kept in test-artifacts/fault-table.txt.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from logistik.commands.tail import text_of
from logistik.kafka import QuietLog, free_port, header_pairs
from logistik.protocol import retry_topic
from tests.support.apache_kafka import ApacheKafka
from tests.support.fatal_errors import inject_fatal_error
from tests.support.harness import RouterProcess, RouterThread, handler, make_config
from tests.support.kafkatools import (
    Record,
    create_topics,
    event,
    held_events,
    unique,
    wait_all_committed,
)
from tests.support.models import ModelServer, Reply, echo, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.skipif(
        os.environ.get("LK_TEST_BROKER", "both") not in ("kafka", "both"),
        reason="broker faults are run on Apache Kafka (LK_TEST_BROKER=kafka or both)",
    ),
]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SESSION_TIMEOUT_S = 6.0  # the tests' consumer session timeout (make_config)

StartKafka = Callable[..., ApacheKafka]
StartModel = Callable[..., ModelServer]
StartProcess = Callable[[dict[str, Any]], RouterProcess]
StartRouter = Callable[[dict[str, Any]], RouterThread]


@pytest.fixture
def start_kafka(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartKafka]:
    """A broker of this test's own, started unless `started=False`; its log is kept."""
    brokers: list[ApacheKafka] = []

    def start(started: bool = True, **options: Any) -> ApacheKafka:
        broker = ApacheKafka(tmp_path / f"kafka-{len(brokers)}.log", **options)
        brokers.append(broker)
        return broker.start() if started else broker

    yield start
    for broker in brokers:
        broker.stop()
        if broker.log_path.exists():
            (ARTIFACTS / "kafka").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(broker.log_path, ARTIFACTS / "kafka" / f"{request.node.name}.log")


class Feeder:
    """Produces events at a steady rate from a thread, noting when and where each went."""

    def __init__(self, servers: str, topic: str, count: int, rate_per_s: float) -> None:
        self.topic = topic
        self.events = [event(actor=f"actor-{i % 40}") for i in range(count)]
        self.sent_at: list[float] = []  # when each event was handed to the producer
        self.partitions: dict[str, int] = {}  # event id -> partition, once acknowledged
        self._rate_per_s = rate_per_s
        self._producer = Producer(
            {
                "bootstrap.servers": servers,
                "enable.idempotence": True,  # a duplicate here would be counted against logistik
                "linger.ms": 5,
                "logger": QuietLog(),
            }
        )
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._lock = threading.Lock()
        self._hurry = threading.Event()  # set: the events left go without pauses
        self.unacknowledged = -1

    def start(self) -> Feeder:
        """Start sending."""
        self._thread.start()
        return self

    def _feed(self) -> None:
        started = time.monotonic()
        for index, item in enumerate(self.events):
            pause_s = started + index / self._rate_per_s - time.monotonic()
            if pause_s > 0 and not self._hurry.is_set():
                self._producer.poll(pause_s)
            value = orjson.dumps(item)
            while True:
                try:
                    self._producer.produce(
                        self.topic, value, item["actor"]["id"].encode(), on_delivery=self._acked
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
            with self._lock:
                self.sent_at.append(time.monotonic())
            self._producer.poll(0)
        self.unacknowledged = self._producer.flush(120)

    def _acked(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            item = orjson.loads(message.value() or b"{}")
            self.partitions[item["id"]] = int(message.partition() or 0)

    def finish(self, timeout_s: float = 150.0, rest_at_once: bool = False) -> None:
        """Wait until every event was sent and acknowledged; with `rest_at_once` (the fault
        over and measured) the events not yet sent go without pauses."""
        if rest_at_once:
            self._hurry.set()
        self._thread.join(timeout_s)
        assert self.unacknowledged == 0, f"{self.unacknowledged} event(s) not acknowledged"

    def ids(self) -> set[str]:
        """Every event's id."""
        return {e["id"] for e in self.events}

    def sent_after(self, moment: float) -> set[str]:
        """Ids of the events handed to the producer after `moment`."""
        with self._lock:
            times = list(self.sent_at)
        return {self.events[i]["id"] for i, at in enumerate(times) if at >= moment}


class Observer:
    """Reads topics from their beginning without a consumer group, from a thread.

    A broker frozen or restarted expels the members of every group: a group's reader would
    read everything again, or wait to rejoin. Without a group it reads each record once.
    """

    def __init__(self, servers: str, *topics: str) -> None:
        self._records: dict[str, list[Record]] = {topic: [] for topic in topics}
        self._unassigned = set(topics)  # topics not there yet: assigned once they are
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": servers,
                "group.id": unique("observer"),  # required, never joined: partitions are assigned
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "logger": QuietLog(),
            }
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        looked = 0.0
        while not self._stop.is_set():
            if self._unassigned and time.monotonic() - looked > 0.5:
                looked = time.monotonic()
                self._assign_existing()
            message = self._consumer.poll(0.05)
            if message is None or message.error() is not None:
                continue
            record = Record(
                str(message.topic()),
                int(message.partition() or 0),
                int(message.offset() or 0),
                message.key(),
                message.value(),
                {name: text_of(value) or "" for name, value in header_pairs(message)},
            )
            with self._lock:
                self._records[record.topic].append(record)
        self._consumer.close()

    def _assign_existing(self) -> None:
        try:
            metadata = self._consumer.list_topics(timeout=1)
        except KafkaException:
            return
        for topic in sorted(self._unassigned):
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                continue
            starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in found.partitions]
            self._consumer.incremental_assign(starts)
            self._unassigned.discard(topic)

    def on(self, topic: str) -> list[Record]:
        """Records read so far from one topic."""
        with self._lock:
            return list(self._records[topic])

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class Answers:
    """What logistik wrote, parsed once: answers by group, failed records by group."""

    def __init__(self, reader: Observer, groups: dict[str, str], failed: str) -> None:
        self.reader, self.groups, self.failed_topic = reader, groups, failed
        self._seen: dict[str, int] = {}
        self.answers: dict[str, list[str]] = {group: [] for group in groups}
        self.failed: dict[str, list[Record]] = {group: [] for group in groups}
        self.unattributed: list[Record] = []

    def update(self) -> Answers:
        """Take in the records read since the last update."""
        for topic in {*self.groups.values(), self.failed_topic}:
            records = self.reader.on(topic)
            for record in records[self._seen.get(topic, 0) :]:
                self._take(topic, record)
            self._seen[topic] = len(records)
        return self

    def _take(self, topic: str, record: Record) -> None:
        if topic == self.failed_topic:
            group = record.headers.get("logistik.group", "")
            self.failed.get(group, self.unattributed).append(record)
            return
        node = record.headers.get("logistik.node_id", "")
        for group, answers_topic in self.groups.items():
            if answers_topic == topic and node.startswith(f"{group}-"):
                self.answers[group].append(record.json()["id"])

    def failed_ids(self, group: str) -> set[str]:
        """Events a group failed, by the failed records naming it."""
        return {failed_id(r) for r in self.failed[group]}

    def settled(self, ids: set[str]) -> bool:
        """Whether every event is answered or failed by every group."""
        self.update()
        return all(ids <= set(self.answers[g]) | self.failed_ids(g) for g in self.groups)

    def answered_any(self, ids: set[str]) -> bool:
        """Whether any of these events is answered by some group."""
        self.update()
        return any(not ids.isdisjoint(answers) for answers in self.answers.values())


def failed_id(record: Record) -> str:
    """The event id of a failed record: its header, or its event's when the header was cut."""
    ident = record.headers.get("logistik.event_id", "")
    if not ident.endswith(" bytes]"):
        return ident
    return str(record.json()["id"])


@dataclass(frozen=True)
class Row:
    """One row of the fault table; answered..duplicated count (event, group) pairs."""

    fault: str
    events: int
    groups: int
    answered: int
    failed: int
    lost: int
    duplicated: int
    resume_s: float | None

    def line(self) -> str:
        resume = "-" if self.resume_s is None else f"{self.resume_s:.1f} s"
        return (
            f"| {self.fault} | {self.events} | {self.groups} | {self.answered} | {self.failed} | "
            f"{self.lost} | {self.duplicated} | {resume} |"
        )


def account(fault: str, found: Answers, ids: set[str], resume_s: float | None) -> Row:
    """Count every (event, group): answered, failed, lost (neither), answered more than once."""
    found.update()
    answered = failed = lost = duplicated = 0
    for group in found.groups:
        counts = Counter(a for a in found.answers[group] if a in ids)
        failed_ids = found.failed_ids(group) & ids
        answered += len(counts)
        failed += len(failed_ids - set(counts))
        lost += len(ids - set(counts) - failed_ids)
        duplicated += sum(n - 1 for n in counts.values())
    row = Row(fault, len(ids), len(found.groups), answered, failed, lost, duplicated, resume_s)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "fault-table.txt", "a") as table:
        table.write(row.line() + "\n")
    print(f"\nfault table: {row.line()}")
    return row


def time_to_resume(found: Answers, feeder: Feeder, since: float, timeout_s: float = 60) -> float:
    """Seconds from `since` until an event sent after it is answered."""

    def resumed() -> bool:
        fresh = feeder.sent_after(since)
        return bool(fresh) and found.answered_any(fresh)

    wait_until(resumed, timeout_s, "an event sent after the fault to be answered")
    return time.monotonic() - since


def readiness(port: int) -> tuple[int, dict[str, Any]]:
    """/readyz of a logistik process: status and checks."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
    except OSError:
        return 0, {}


def two_groups(
    servers: str, topic: str, start_model: StartModel
) -> tuple[dict[str, Any], dict[str, str]]:
    """A config with two groups on one topic (models answering after 5 ms), and their topics."""
    groups = {"face": f"{topic}-face", "age": f"{topic}-age"}
    create_topics(
        servers, topic, f"{topic}-retry", f"{topic}-failed", *groups.values(), partitions=3
    )
    reply = lambda ev, n: Reply(200, {"id": ev["id"]}, delay_s=0.005)  # noqa: E731
    handlers = [
        handler(name, topic, start_model(reply).port, return_to=answers)
        for name, answers in groups.items()
    ]
    return make_config(servers, handlers), groups


def stop_gracefully(process: RouterProcess) -> None:
    """SIGTERM, and a clean exit."""
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0, process.log()[-3000:]


def test_broker_killed_and_restarted_while_events_flow(
    start_kafka: StartKafka, model_server: StartModel, router_process: StartProcess
) -> None:
    kafka = start_kafka()
    servers, topic = kafka.bootstrap_servers, unique("events")
    config, groups = two_groups(servers, topic, model_server)
    feeder = Feeder(servers, topic, 3000, 150)
    with Observer(servers, f"{topic}-failed", *groups.values()) as reader:
        found = Answers(reader, groups, f"{topic}-failed")
        logistik = router_process(config)
        feeder.start()
        wait_until(lambda: len(found.update().answers["face"]) >= 300, 60, "first answers")
        kafka.kill()
        time.sleep(2)  # the outage itself: the broker is away for this long, then restarts
        kafka.restart()
        back = time.monotonic()
        resume_s = time_to_resume(found, feeder, back)
        wait_until(lambda: readiness(config["web"]["port"])[0] == 200, 60, "ready again")
        feeder.finish(rest_at_once=True)
        wait_until(lambda: found.settled(feeder.ids()), 120, "every event answered or failed")
        stop_gracefully(logistik)
    row = account("broker kill -9, restarted (log kept)", found, feeder.ids(), resume_s)
    assert row.lost == 0 and row.failed == 0


def test_broker_frozen_longer_than_the_session_timeout(
    start_kafka: StartKafka, model_server: StartModel, router_process: StartProcess
) -> None:
    kafka = start_kafka()
    servers, topic = kafka.bootstrap_servers, unique("events")
    config, groups = two_groups(servers, topic, model_server)
    feeder = Feeder(servers, topic, 3000, 150)
    with Observer(servers, f"{topic}-failed", *groups.values()) as reader:
        found = Answers(reader, groups, f"{topic}-failed")
        logistik = router_process(config)
        feeder.start()
        wait_until(lambda: len(found.update().answers["face"]) >= 300, 60, "first answers")
        kafka.pause()
        time.sleep(SESSION_TIMEOUT_S + 4)  # the fault: frozen past every member's session
        kafka.resume()
        back = time.monotonic()
        resume_s = time_to_resume(found, feeder, back)
        feeder.finish(rest_at_once=True)
        wait_until(lambda: found.settled(feeder.ids()), 120, "every event answered or failed")
        stop_gracefully(logistik)
    row = account("broker SIGSTOP 10 s (> session timeout), SIGCONT", found, feeder.ids(), resume_s)
    assert row.lost == 0 and row.failed == 0


def test_logistik_started_before_the_broker_waits_for_it(
    start_kafka: StartKafka, model_server: StartModel, router_process: StartProcess
) -> None:
    kafka = start_kafka(started=False)
    servers, topic = kafka.bootstrap_servers, unique("events")
    groups = {"face": f"{topic}-results"}
    model = model_server(lambda ev, n: Reply(200, {"id": ev["id"]}))
    config = make_config(servers, [handler("face", topic, model.port)])
    port = config["web"]["port"]
    logistik = router_process(config)
    wait_until(lambda: "waiting for the Kafka broker" in logistik.log(), 30, "the waiting line")
    status, checks = readiness(port)
    assert status == 503
    assert checks["checks"]["consuming"]["detail"].startswith("waiting for the Kafka broker")
    kafka.start()
    back = time.monotonic()
    feeder = Feeder(servers, topic, 600, 100).start()
    with Observer(servers, f"{topic}-failed", *groups.values()) as reader:
        found = Answers(reader, groups, f"{topic}-failed")
        resume_s = time_to_resume(found, feeder, back, 90)
        feeder.finish(rest_at_once=True)
        wait_until(lambda: found.settled(feeder.ids()), 60, "every event answered or failed")
        assert readiness(port)[0] == 200
        stop_gracefully(logistik)
    log = logistik.log()
    assert log.count("waiting for the Kafka broker") == 1, log
    assert "answers: starting" in log
    row = account("logistik started before the broker", found, feeder.ids(), resume_s)
    assert row.lost == 0 and row.failed == 0 and row.duplicated == 0


def test_three_processes_one_killed_one_added_one_stopped(
    start_kafka: StartKafka, model_server: StartModel, tmp_path: Path
) -> None:
    kafka = start_kafka()
    servers, topic = kafka.bootstrap_servers, unique("events")
    groups = {"face": f"{topic}-results"}
    create_topics(
        servers, topic, f"{topic}-retry", f"{topic}-failed", *groups.values(), partitions=6
    )
    group = unique("logistik")
    reply = lambda ev, n: Reply(200, {"id": ev["id"]}, delay_s=0.005)  # noqa: E731
    # One model per process, so that each model's requests are the events its process called.
    models = [model_server(reply) for _ in range(4)]

    def process(model: ModelServer) -> RouterProcess:
        config = make_config(
            servers, [handler("face", topic, model.port)], kafka={"group_id": group}
        )
        return RouterProcess(config, tmp_path).start()

    killed, stopped, kept = (process(m) for m in models[:3])
    feeder = Feeder(servers, topic, 5000, 200)
    processes = [killed, stopped, kept]
    retries = retry_topic(topic, "face")
    try:
        with Observer(servers, f"{topic}-failed", retries, *groups.values()) as reader:
            found = Answers(reader, groups, f"{topic}-failed")
            feeder.start()

            def answers_reach(count: int) -> None:
                wait_until(
                    lambda: len(found.update().answers["face"]) >= count, 60, f"{count} answers"
                )

            answers_reach(800)
            wait_until(lambda: models[0].count > 0, 30, "the first process to route")
            killed.kill()
            at_kill = time.monotonic()
            called = set(models[0].ids())
            orphaned = {feeder.partitions[i] for i in called if i in feeder.partitions}
            answers_reach(len(found.answers["face"]) + 600)
            added = process(models[3])
            processes.append(added)
            answers_reach(len(found.answers["face"]) + 600)
            stop_gracefully(stopped)

            def orphans_answered() -> bool:
                fresh = {
                    i for i in feeder.sent_after(at_kill) if feeder.partitions.get(i) in orphaned
                }
                return bool(fresh) and found.answered_any(fresh)

            wait_until(orphans_answered, 60, "the killed process's partitions answered again")
            resume_s = time.monotonic() - at_kill
            feeder.finish(rest_at_once=True)
            wait_until(lambda: found.settled(feeder.ids()), 120, "every event answered or failed")
            for running in (kept, added):
                stop_gracefully(running)
    finally:
        for running in processes:
            running.kill()
    row = account("3 processes: kill -9 one, add one, SIGTERM one", found, feeder.ids(), resume_s)
    assert row.lost == 0 and row.failed == 0
    twice = {i for i, n in Counter(found.answers["face"]).items() if n > 1}
    # Only events the killed process had called, or that waited on the retry topic (a model
    # busy on a loaded machine sends events there; a record taken from it when its partition
    # changes hands is delivered again from the commit point, as any record is).
    retried = {held.get("id") for r in reader.on(retries) for _, held in held_events(r)}
    assert twice <= set(models[0].ids()) | retried


def test_a_return_topic_the_broker_refuses(
    start_kafka: StartKafka, model_server: StartModel, router_process: StartProcess
) -> None:
    kafka = start_kafka(auto_create_topics=False)
    servers, topic = kafka.bootstrap_servers, unique("events")
    groups = {"face": f"{topic}-results", "age": f"{topic}-missing"}
    create_topics(servers, topic, f"{topic}-retry", f"{topic}-failed", groups["face"], partitions=3)
    handlers = [
        handler(name, topic, model_server().port, return_to=answers)
        for name, answers in groups.items()
    ]
    config = make_config(servers, handlers, kafka={"create_topics": False})
    feeder = Feeder(servers, topic, 600, 100)
    with Observer(servers, f"{topic}-failed", *groups.values()) as reader:
        found = Answers(reader, groups, f"{topic}-failed")
        logistik = router_process(config)
        feeder.start().finish()
        fed = time.monotonic()
        # The healthy group is not held by the other group's refused answers.
        wait_until(lambda: set(found.update().answers["face"]) >= feeder.ids(), 30, "face")
        healthy_s = time.monotonic() - fed
        wait_until(lambda: found.settled(feeder.ids()), 90, "every event answered or failed")
        wait_all_committed(servers, config["kafka"]["group_id"], topic, 600, 3, 30)
        stop_gracefully(logistik)
    row = account("return topic missing (auto-creation off)", found, feeder.ids(), None)
    assert row.lost == 0
    assert healthy_s < 5.0
    assert set(found.answers["face"]) == feeder.ids()
    assert found.failed_ids("age") == feeder.ids()
    assert {r.headers["logistik.reason"] for r in found.failed["age"]} == {"publish-failed"}


def test_an_answer_larger_than_its_topic_takes(
    start_kafka: StartKafka, model_server: StartModel, router_process: StartProcess
) -> None:
    kafka = start_kafka()
    servers, topic = kafka.bootstrap_servers, unique("events")
    groups = {"face": f"{topic}-results"}
    create_topics(servers, topic, f"{topic}-retry", f"{topic}-failed", partitions=3)
    admin = AdminClient({"bootstrap.servers": servers})
    small = NewTopic(groups["face"], 3, config={"max.message.bytes": "20000"})
    admin.create_topics([small])[groups["face"]].result(10)

    # Random text, which the producer's compression cannot bring under the limit.
    large = base64.b64encode(os.urandom(37_500)).decode()

    def sized(ev: dict[str, Any], count: int) -> Reply:
        return Reply(200, {"id": ev["id"], "pad": large if count % 10 == 0 else "x" * 10})

    model = model_server(sized)
    config = make_config(servers, [handler("face", topic, model.port)])
    feeder = Feeder(servers, topic, 600, 150)
    with Observer(servers, f"{topic}-failed", *groups.values()) as reader:
        found = Answers(reader, groups, f"{topic}-failed")
        logistik = router_process(config)
        feeder.start().finish()
        wait_until(lambda: found.settled(feeder.ids()), 90, "every event answered or failed")
        wait_all_committed(servers, config["kafka"]["group_id"], topic, 600, 3, 30)
        stop_gracefully(logistik)
    row = account("answer over the return topic's max.message.bytes", found, feeder.ids(), None)
    assert row.lost == 0 and row.failed == 60  # every tenth answer is too large, only those
    assert {r.headers["logistik.reason"] for r in found.failed["face"]} == {"publish-failed"}


def test_a_failed_record_too_large_is_written_cut_and_the_partition_moves_on(
    start_kafka: StartKafka, model_server: StartModel, router_process: StartProcess
) -> None:
    kafka = start_kafka()
    servers, topic = kafka.bootstrap_servers, unique("events")
    groups = {"face": f"{topic}-results"}
    admin = AdminClient({"bootstrap.servers": servers})
    big_topic = NewTopic(topic, 1, config={"max.message.bytes": str(12 * 2**20)})
    admin.create_topics([big_topic])[topic].result(10)
    create_topics(servers, f"{topic}-retry", f"{topic}-failed", *groups.values())
    huge_id = "i" * 600_000
    model = model_server(
        lambda ev, n: Reply(400, {"error": "too long"}) if ev["id"] == huge_id else echo(ev, n)
    )
    config = make_config(servers, [handler("face", topic, model.port)])
    garbage = b"\xff" + os.urandom(10 * 2**20 - 1)
    before, after = [event() for _ in range(50)], [event() for _ in range(50)]
    producer = Producer({"bootstrap.servers": servers, "message.max.bytes": 12 * 2**20})
    for value in [*map(orjson.dumps, before), garbage, orjson.dumps(event(id=huge_id))]:
        producer.produce(topic, value)
    for value in map(orjson.dumps, after):
        producer.produce(topic, value)
    assert producer.flush(30) == 0
    with Observer(servers, f"{topic}-failed", *groups.values()) as reader:
        found = Answers(reader, groups, f"{topic}-failed")
        logistik = router_process(config)
        normal = {e["id"] for e in before + after}
        wait_until(lambda: found.settled(normal | {huge_id}), 60, "every event answered or failed")
        # The record that is not an event has no group: it is failed on its own.
        wait_until(lambda: len(found.update().unattributed) == 1, 30, "the cut record")
        wait_all_committed(servers, config["kafka"]["group_id"], topic, 102, 1, 30)
        stop_gracefully(logistik)
    [cut] = found.unattributed
    assert cut.headers["logistik.truncated"] == "true"
    assert cut.headers["logistik.original_size"] == str(len(garbage))
    assert cut.headers["logistik.sha256"] == hashlib.sha256(garbage).hexdigest()
    assert cut.headers["logistik.source"] == f"{topic}/0/50"
    assert cut.value == garbage[: len(cut.value or b"")] and 0 < len(cut.value or b"") < 2**20
    [refused] = found.failed["face"]
    assert refused.headers["logistik.event_id"].endswith("[cut from 600000 bytes]")
    assert orjson.loads(refused.value or b"")["id"] == huge_id  # the event itself is whole
    row = account(
        "10 MB record that is not an event; 600 kB event id", found, normal | {huge_id}, None
    )
    assert row.lost == 0 and row.failed == 1


def test_a_fatal_producer_error_while_events_flow(
    start_kafka: StartKafka, model_server: StartModel, router: StartRouter
) -> None:
    kafka = start_kafka()
    servers, topic = kafka.bootstrap_servers, unique("events")
    config, groups = two_groups(servers, topic, model_server)
    feeder = Feeder(servers, topic, 2000, 200)
    with Observer(servers, f"{topic}-failed", *groups.values()) as reader:
        found = Answers(reader, groups, f"{topic}-failed")
        running = router(config)
        assert running.runner is not None and running.runner.producer is not None
        producer = running.runner.producer
        feeder.start()
        wait_until(lambda: len(found.update().answers["face"]) >= 300, 60, "first answers")
        inject_fatal_error(producer.client)
        at_fault = time.monotonic()
        resume_s = time_to_resume(found, feeder, at_fault)
        feeder.finish(rest_at_once=True)
        wait_until(lambda: found.settled(feeder.ids()), 90, "every event answered or failed")
        assert producer.recovered == 1 and producer.state()[0] == "ok"
    row = account("fatal producer error (Unknown Producer Id)", found, feeder.ids(), resume_s)
    assert row.lost == 0 and row.failed == 0


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_time_to_resume_after_kill_9_with_and_without_static_membership(
    static: bool, start_kafka: StartKafka, model_server: StartModel, router_process: StartProcess
) -> None:
    kafka = start_kafka()
    servers, topic = kafka.bootstrap_servers, unique("events")
    groups = {"face": f"{topic}-results"}
    create_topics(
        servers, topic, f"{topic}-retry", f"{topic}-failed", *groups.values(), partitions=3
    )
    model = model_server(lambda ev, n: Reply(200, {"id": ev["id"]}, delay_s=0.005))
    membership = {"group_instance_id": "logistik-{hostname}"} if static else {}
    config = make_config(
        servers,
        [handler("face", topic, model.port)],
        kafka={"session_timeout_ms": 10_000, **membership},
    )
    feeder = Feeder(servers, topic, 3000, 150)
    with Observer(servers, f"{topic}-failed", *groups.values()) as reader:
        found = Answers(reader, groups, f"{topic}-failed")
        first = router_process(config)
        feeder.start()
        # Killed in a steady flow, past the first burst of events sent during its start.
        wait_all_committed(servers, config["kafka"]["group_id"], topic, 600, 3, 60)
        first.kill()
        again = router_process(copy.deepcopy(config))
        restarted = time.monotonic()
        resume_s = time_to_resume(found, feeder, restarted)
        feeder.finish(rest_at_once=True)
        wait_until(lambda: found.settled(feeder.ids()), 120, "every event answered or failed")
        stop_gracefully(again)
    kind = "static membership" if static else "dynamic membership"
    row = account(f"logistik kill -9, restarted at once ({kind})", found, feeder.ids(), resume_s)
    assert row.lost == 0 and row.failed == 0
    if static:
        assert resume_s < 8.0  # well under the 10 s session timeout a new member waits out


def test_two_processes_with_one_static_identity_the_older_stops(
    start_kafka: StartKafka, model_server: StartModel, router_process: StartProcess
) -> None:
    kafka = start_kafka()
    servers, topic = kafka.bootstrap_servers, unique("events")
    create_topics(servers, topic, f"{topic}-retry", f"{topic}-failed", f"{topic}-results")
    config = make_config(
        servers,
        [handler("face", topic, model_server().port)],
        kafka={"group_instance_id": "logistik-{hostname}"},
    )
    older = router_process(config)
    wait_until(lambda: "assigned" in older.log(), 60, "the first process to be assigned")
    newer = router_process({**copy.deepcopy(config), "web": {"port": free_port()}})
    assert older.wait(60) == 1
    assert "the Kafka consumer cannot go on" in older.log()
    assert "fenced" in older.log()
    stop_gracefully(newer)

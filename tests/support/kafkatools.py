"""Kafka helpers for tests: make topics, produce events, read what logistik wrote."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from logistik.protocol import Header, bundle_entries


@dataclass(frozen=True)
class Record:
    """A record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    timestamp_ms: int = -1  # the record's Kafka timestamp; -1 when it has none

    def json(self) -> Any:
        """The value parsed as JSON."""
        assert self.value is not None
        return orjson.loads(self.value)


def held_events(record: Record) -> list[tuple[int, dict[str, Any]]]:
    """The (source offset, event) pairs of a retry topic's record: one, or a bundle's."""
    count = record.headers.get(Header.BUNDLE)
    if count is not None:
        entries = bundle_entries(record.value, int(count))
        return [(offset, orjson.loads(body)) for offset, body in entries]
    offset = int(record.headers[Header.SOURCE].rsplit("/", 1)[1])
    return [(offset, record.json())]


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topics(servers: str, *topics: str, partitions: int = 1) -> None:
    """Create topics and wait until the broker has them."""
    admin = AdminClient({"bootstrap.servers": servers})
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions) for t in topics])
    for future in futures.values():
        future.result(10)


def event_producer(servers: str, linger_ms: int = 1) -> Producer:
    """The tests' load generator: idempotent, so a resend under load never writes a record twice."""
    return Producer(
        {"bootstrap.servers": servers, "linger.ms": linger_ms, "enable.idempotence": True}
    )


def produce(
    servers: str,
    topic: str,
    values: Sequence[bytes | dict[str, Any]],
    partition: int | None = None,
    headers: Sequence[tuple[str, bytes | str | None]] | None = None,
    spread: int | None = None,
) -> None:
    """Produce records (each with `headers`, when given) and wait for every acknowledgement.

    `spread=N` puts value i on partition i mod N: without keys the producer's sticky
    partitioner may put a small batch on one partition, and so on one consumer.
    """
    producer = event_producer(servers)
    extra: dict[str, Any] = {} if partition is None else {"partition": partition}
    if headers is not None:
        extra["headers"] = list(headers)
    for i, value in enumerate(values):
        data = value if isinstance(value, bytes) else orjson.dumps(value)
        if spread is not None:
            extra["partition"] = i % spread
        producer.produce(topic, data, **extra)
    assert producer.flush(20) == 0, "events not acknowledged by the broker"


def open_transaction(servers: str, topic: str, partition: int, value: bytes) -> Producer:
    """A producer that begins a transaction, writes one record in it, and leaves it open.

    read_committed consumers see nothing of the partition past that record until the returned
    producer commits or aborts it (or two minutes pass, when the broker aborts it).
    """
    hung = Producer(
        {
            "bootstrap.servers": servers,
            "transactional.id": unique("hung"),
            "transaction.timeout.ms": 120_000,
        }
    )
    hung.init_transactions(30)
    hung.begin_transaction()
    hung.produce(topic, value, partition=partition)
    assert hung.flush(20) == 0, "the record in the transaction was not acknowledged"
    return hung


def event(verb: str = "detect", actor: str = "user-1", **extra: Any) -> dict[str, Any]:
    """An ActivityStreams-style event with a fresh id."""
    return {"id": uuid.uuid4().hex, "verb": verb, "actor": {"id": actor}, **extra}


# Brokers that answer a consumer's JoinGroup only after half its session timeout, rounded up
# to a second (Tansu): a 2 s session makes each join take 1 s instead of 3. Apache Kafka
# answers at once, and refuses sessions under its group.min.session.timeout.ms (6 s).
QUICK_JOIN_SERVERS: set[str] = set()


def group_session(servers: str) -> dict[str, int]:
    """Session and heartbeat settings of a test's consumer group on this broker."""
    if servers in QUICK_JOIN_SERVERS:
        return {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}
    return {"session.timeout.ms": 6000, "heartbeat.interval.ms": 2000}


class TopicReader:
    """Reads a topic from the beginning in a background thread, keeping every record once."""

    def __init__(self, servers: str, *topics: str) -> None:
        self.records: list[Record] = []
        # The reader commits nothing, so a rebalance (a subscribed topic created later, a
        # session lost on a loaded machine) starts its partitions again from the beginning.
        # A record is its position: one already kept is not kept twice.
        self._positions: set[tuple[str, int, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": servers,
                "group.id": unique("reader"),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **group_session(servers),
                "topic.metadata.refresh.interval.ms": 1000,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.subscribe(list(topics))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.05)
            if message is None or message.error():
                continue
            headers: dict[str, str] = {}
            raw_headers = message.headers() or []
            pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
            for name, value in pairs:
                headers[name] = value.decode() if isinstance(value, bytes) else str(value or "")
            record = Record(
                str(message.topic()),
                int(message.partition() or 0),
                int(message.offset() or 0),
                message.key(),
                message.value(),
                headers,
                message.timestamp()[1],
            )
            position = (record.topic, record.partition, record.offset)
            with self._lock:
                if position not in self._positions:
                    self._positions.add(position)
                    self.records.append(record)
        self._consumer.close()

    def on(self, topic: str) -> list[Record]:
        """Records read so far from one topic."""
        with self._lock:
            return [r for r in self.records if r.topic == topic]

    def wait_for(
        self,
        topic: str,
        count: int,
        timeout_s: float = 30.0,
        context: Callable[[], str] | None = None,
    ) -> list[Record]:
        """Wait until a topic has at least `count` records and return them; on a timeout the
        error adds what `context` says (where the missing records are)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.on(topic)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        said = ""
        if context is not None:
            try:
                said = f"; {context()}"
            except Exception as exc:  # read from another thread: the timeout is still the news
                said = f"; (no context: {exc!r})"
        raise AssertionError(
            f"{topic}: {len(self.on(topic))} record(s) after {timeout_s:g} s, expected {count}"
            f"{said}"
        )

    def close(self) -> None:
        """Stop reading."""
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def end_offsets(servers: str, topic: str, partitions: int = 1) -> list[int]:
    """The high watermark of each partition of a topic."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": unique("probe")})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def committed_offsets(servers: str, group: str, topic: str, partitions: int = 1) -> list[int]:
    """The offsets a consumer group has committed on a topic (-1001 where none)."""
    consumer = Consumer({"bootstrap.servers": servers, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return [tp.offset for tp in found]
    finally:
        consumer.close()


def wait_all_committed(
    servers: str, group: str, topic: str, count: int, partitions: int = 1, timeout_s: float = 30.0
) -> None:
    """Wait until a group has committed `count` records of a fresh topic, i.e. logistik is done.

    The count is given because Tansu reports a partition's high watermark as the base offset
    of its last batch plus one, not the offset after its last record.
    """
    deadline = time.monotonic() + timeout_s
    committed: list[int] = []
    while time.monotonic() < deadline:
        committed = committed_offsets(servers, group, topic, partitions)
        if sum(max(0, offset) for offset in committed) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(
        f"group {group} committed {committed} of {count} record(s) of {topic} "
        f"within {timeout_s:g} s"
    )

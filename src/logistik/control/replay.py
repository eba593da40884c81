"""Replay: send a failed topic's events back to their topics, for the groups that failed them.

The control plane's operator action on failed topics; `logistik replay` drives it and shows
its progress.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from logistik.config import KafkaConfig
from logistik.errors import BrokerError, LogistikError, PublishError
from logistik.event import actor_key
from logistik.kafka import (
    Headers,
    command_consumer_config,
    header_pairs,
    produce,
    producer_config,
    record_time,
    topic_partitions,
)
from logistik.protocol import FailedRecord, Header, Reason

UNDECODABLE = frozenset(reason.value for reason in Reason if reason.undecodable)
SEND, FILTERED, INVALID, NO_SOURCE, GIVEN_UP = (
    "send",
    "filtered",
    "invalid",
    "no-source",
    "given-up",
)
COMMIT_EVERY = 500  # records sent between two (acknowledged, then committed) checkpoints
ACK_TIMEOUT_S = 30.0
POLL_S = 0.1
BROKER_TIMEOUT_S = 10.0
# The lowest a Kafka broker accepts by default; some brokers delay a group's first join by it.
SESSION_TIMEOUT_MS = 6000
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (naive means local time) or one relative to now, like 30m, 2h or 1d.

    ValueError, saying what is accepted, when the text is neither.
    """
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        ago = float(relative[1]) * _UNIT_S[relative[2]]
        return (now or datetime.now(UTC)) - timedelta(seconds=ago)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO time (2024-05-01T12:00:00Z) "
            "nor a relative one (30s, 15m, 2h, 1d, 1w)"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


@dataclass(frozen=True)
class Selection:
    """Which failed records to send again, and how."""

    handlers: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    max_replays: int = 3
    include_invalid: bool = False
    all_handlers: bool = False

    def matches(self, record: FailedRecord, failed_at: datetime) -> bool:
        """Whether the record passes every filter given."""
        if self.handlers and self.handlers.isdisjoint(record.failed_nodes):
            return False
        if self.groups and record.group_id not in self.groups:
            return False
        if self.reasons and record.reason not in self.reasons:
            return False
        if self.since is not None and failed_at < self.since:
            return False
        return self.until is None or failed_at <= self.until

    def verdict(self, record: FailedRecord, failed_at: datetime) -> str:
        """SEND, or why the record is not sent."""
        if not self.matches(record, failed_at):
            return FILTERED
        if record.reason in UNDECODABLE and not self.include_invalid:
            return INVALID
        if not record.topic:
            return NO_SOURCE
        if record.replays >= self.max_replays:
            return GIVEN_UP
        return SEND


def replay_headers(record: FailedRecord, origin: str, all_handlers: bool) -> Headers:
    """Headers of a replayed event: its replay count, where it came from, the group it is for."""
    headers: Headers = [
        (Header.REPLAYS, str(record.replays + 1).encode()),
        (Header.REPLAYED_FROM, origin.encode()),
    ]
    if record.group_id and not all_handlers:
        headers.append((Header.REPLAY_GROUPS, record.group_id.encode()))
    return headers


def event_key(value: bytes | None) -> bytes | None:
    """The event's actor.id as the record key, as logistik keys answers."""
    try:
        event = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return actor_key(event) if isinstance(event, dict) else None


def read_failed(message: Message) -> tuple[FailedRecord | None, datetime]:
    """The failed record and when it failed; None when its headers cannot be read."""
    headers = header_pairs(message)
    written = record_time(message) or datetime.now(UTC)
    try:
        record = FailedRecord.from_headers(message.value(), headers)
    except ValueError:
        return None, written
    if not any(k == Header.FAILED_AT for k, _ in headers):
        return record, written
    at = record.failed_at
    return record, at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Planned:
    """A record a dry run would send, and where it is on the failed topic."""

    partition: int
    offset: int
    record: FailedRecord
    failed_at: datetime


@dataclass
class _Partition:
    """Reading state of one assigned partition."""

    end: int  # high watermark when assigned (Tansu: its last batch's base offset + 1)
    next: int  # the next offset to handle
    committed: int  # what the group has committed so far
    stopped: bool = False  # reached records written after this run started: left for the next


class Replayer:
    """Reads a failed topic with a consumer group and sends its events back, then commits.

    What it did is in `counts` (by verdict), `read`, `total` and, in a dry run, `planned`.
    """

    def __init__(
        self, kafka: KafkaConfig, topic: str, group_id: str, selection: Selection, dry_run: bool
    ) -> None:
        self.servers, self.topic, self.group_id = kafka.bootstrap_servers, topic, group_id
        self.selection = selection
        self.counts: Counter[str] = Counter()
        self.read = 0
        self.total = 0
        self.planned: list[Planned] = []  # what a dry run would send
        self.assigned = False
        self.interrupted = False
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._started_ms = int(time.time() * 1000)
        self._last_record = time.monotonic()
        self._unsettled = 0
        self._errors: list[KafkaError] = []
        self._broken = False  # after a failed send nothing more is committed
        try:
            self._consumer = Consumer(
                command_consumer_config(
                    kafka,
                    group_id,
                    **{
                        "auto.offset.reset": "earliest",
                        "session.timeout.ms": SESSION_TIMEOUT_MS,
                    },
                )
            )
            self._producer = (
                None
                if dry_run
                else Producer(producer_config(kafka, ack_timeout_s=ACK_TIMEOUT_S, quiet=True))
            )
        except KafkaException as exc:
            raise BrokerError(f"cannot set up the Kafka clients: {exc.args[0].str()}") from None

    def close(self) -> None:
        """Leave the group (committing nothing more after a failure)."""
        with contextlib.suppress(KafkaException, LogistikError):
            self._consumer.close()  # what was acknowledged is committed already

    def run(self, timeout_s: float, idle_s: float, progress: Callable[[Replayer], None]) -> bool:
        """Replay until every assigned partition is read; False when the timeout came first.

        `progress` is called after each record of this run.
        """
        topic_partitions(self._consumer, self.servers, self.topic)
        self._consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        deadline = time.monotonic() + timeout_s
        done = False
        try:
            while not done and time.monotonic() < deadline:
                message = self._consumer.poll(POLL_S)
                if message is not None and self._handle(message):
                    progress(self)
                done = self._finished(idle_s)
        except KeyboardInterrupt:
            self.interrupted = True
        except KafkaException as exc:
            raise BrokerError(f"Kafka: {exc.args[0].str()}") from None
        self._settle(list(self._parts))
        return done

    def _finished(self, idle_s: float) -> bool:
        """Every partition read to its end (or stopped), and nothing more came for idle_s."""
        if not self.assigned or time.monotonic() - self._last_record < idle_s:
            return False
        return all(p.stopped or p.next >= p.end for p in self._parts.values())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in consumer.committed(partitions, timeout=BROKER_TIMEOUT_S):
            low, high = consumer.get_watermark_offsets(tp, timeout=BROKER_TIMEOUT_S, cached=False)
            start = max(tp.offset, low)
            self._parts[(tp.topic, tp.partition)] = _Partition(high, start, start)
            self.total += max(0, high - start)
        self.assigned = True
        self._last_record = time.monotonic()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._settle(keys)
        self._on_lost(consumer, partitions)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.pop((tp.topic, tp.partition), None)

    def _handle(self, message: Message) -> bool:
        """Handle one record of the failed topic; False when it is not for this run."""
        error = message.error()
        if error is not None:
            if error.fatal():
                raise BrokerError(f"Kafka: {error.str()}")
            return False
        key = (str(message.topic()), int(message.partition() or 0))
        part, offset = self._parts.get(key), int(message.offset() or 0)
        if part is None or part.stopped or offset < part.next:
            return False
        kind, millis = message.timestamp()
        if offset >= part.end and kind != TIMESTAMP_NOT_AVAILABLE and millis >= self._started_ms:
            part.stopped = True  # e.g. a replayed event that failed again: not in this run
            self._consumer.pause([TopicPartition(*key)])
            return False
        part.next = offset + 1
        self._last_record = time.monotonic()
        self.read += 1
        self._route(message)
        return True

    def _route(self, message: Message) -> None:
        """Count the record's verdict and send it (or note it, in a dry run)."""
        record, failed_at = read_failed(message)
        verdict = NO_SOURCE if record is None else self.selection.verdict(record, failed_at)
        self.counts[verdict] += 1
        if verdict != SEND or record is None:
            return
        partition, offset = int(message.partition() or 0), int(message.offset() or 0)
        if self._producer is None:
            self.planned.append(Planned(partition, offset, record, failed_at))
            return
        origin = f"{self.topic}/{partition}/{offset}"
        self._send(record, replay_headers(record, origin, self.selection.all_handlers))

    def _send(self, record: FailedRecord, headers: Headers) -> None:
        assert self._producer is not None
        produce(
            self._producer,
            record.topic,
            record.value,
            event_key(record.value),
            headers,
            self._delivered,
        )
        self._unsettled += 1
        if self._unsettled >= COMMIT_EVERY:
            self._settle(list(self._parts))

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._errors.append(error)

    def _settle(self, keys: list[tuple[str, int]]) -> None:
        """Wait for every acknowledgement, then commit what was read (never in a dry run)."""
        if self._producer is None or self._broken:
            return
        left = self._producer.flush(ACK_TIMEOUT_S + 5)
        if left or self._errors:
            self._broken = True
            raise PublishError(self._send_failure(left))
        self._unsettled = 0
        parts = [(key, p) for key in keys if (p := self._parts.get(key)) and p.next > p.committed]
        if not parts:
            return
        try:
            done = self._consumer.commit(
                offsets=[TopicPartition(t, n, p.next) for (t, n), p in parts], asynchronous=False
            )
        except KafkaException as exc:
            self._broken = True
            raise BrokerError(self._commit_failure(exc.args[0].str())) from None
        failed = [tp.error for tp in done or [] if tp.error is not None]
        if failed:
            self._broken = True
            raise BrokerError(self._commit_failure(failed[0].str()))
        for _key, part in parts:
            part.committed = part.next

    def _send_failure(self, left: int) -> str:
        if left:
            return (
                f"{left} replayed record(s) not acknowledged by {self.servers} within "
                f"{ACK_TIMEOUT_S:g} s; the rest of {self.topic} is not committed: "
                "run again"
            )
        return (
            f"{len(self._errors)} replayed record(s) not written: {self._errors[0].str()}; "
            f"the rest of {self.topic} is not committed: run again"
        )

    def _commit_failure(self, error: str) -> str:
        return (
            f"the replayed records were sent, but the position in {self.topic} could not "
            f"be committed ({error}): a next run sends them again"
        )

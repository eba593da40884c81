"""Kafka clients (confluent-kafka): a consumer driven from one thread and an awaitable producer."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from logistik.config import KafkaConfig
from logistik.errors import BrokerError, PublishError
from logistik.kafka.offsets import OffsetBook, TopicPartitionKey
from logistik.protocol import RETRY_SUFFIX

logger = logging.getLogger(__name__)
_TIMINGS = re.compile(r"\(after \d+ms[^)]*\)|\d+ms")

Headers = list[tuple[str, str | bytes | None]]


class LibrdkafkaLog:
    """Receives librdkafka's log lines, capped at WARNING, each distinct line once per interval.

    librdkafka repeats a failed connection every few milliseconds while a broker is away;
    logistik reports what that means for events itself, so the repetition is only noise.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        self._logger = logging.getLogger("logistik.librdkafka")
        self._interval_s = interval_s
        self._last: dict[str, float] = {}

    def log(self, level: int, message: str, *args: object) -> None:
        """Log one librdkafka line unless the same line was logged within the interval."""
        text = message % args if args else message
        key = _TIMINGS.sub("", text)
        now = time.monotonic()
        if now - self._last.get(key, -self._interval_s) < self._interval_s:
            return
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        self._logger.log(min(level, logging.WARNING), "%s", text)


class QuietLog:
    """Swallows librdkafka's log lines, for commands that report what they mean in one line."""

    def log(self, level: int, message: str, *args: object) -> None:
        """Drop one librdkafka line."""


def base_config(servers: str) -> dict[str, Any]:
    """Settings every client shares."""
    return {"bootstrap.servers": servers, "client.id": "logistik", "logger": LibrdkafkaLog()}


def consumer_config(kafka: KafkaConfig) -> dict[str, Any]:
    """Consumer settings: manual commits, low fetch wait, the configured group."""
    return {
        **base_config(kafka.bootstrap_servers),
        "group.id": kafka.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        "session.timeout.ms": kafka.session_timeout_ms,
        "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
        "topic.metadata.refresh.interval.ms": 10_000,
        # Adding or removing a topic moves only its partitions, not every partition.
        "partition.assignment.strategy": "cooperative-sticky",
        **kafka.consumer,
    }


def producer_config(kafka: KafkaConfig) -> dict[str, Any]:
    """Producer settings: idempotent, acknowledged by all replicas, short linger for batching."""
    return {
        **base_config(kafka.bootstrap_servers),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        **kafka.producer,
    }


class EventConsumer:
    """A Kafka consumer whose every call runs on one dedicated thread."""

    def __init__(self, kafka: KafkaConfig, book: OffsetBook, drain_s: float = 30.0) -> None:
        self._book = book
        self._drain_s = drain_s
        self._consumer = Consumer(
            {
                **consumer_config(kafka),
                "on_commit": self._on_commit,
                "statistics.interval.ms": 5000,
                "stats_cb": self._on_stats,
            }
        )
        self.lag: dict[TopicPartitionKey, int] = {}  # from librdkafka's statistics
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consumer")
        self._assignment: list[TopicPartition] = []
        self._paused = False
        self._paused_topics: set[str] = set()  # paused on their own, e.g. retry topics

    async def run(self, call: Callable[[], Any]) -> Any:
        """Run a consumer call on the consumer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    def subscribe(self, topics: Sequence[str]) -> None:
        """Subscribe to topics (consumer thread)."""
        self._consumer.subscribe(
            list(topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def poll_batch(self, max_messages: int, timeout_s: float, commit: bool) -> list[Message]:
        """Commit finished offsets, then wait up to timeout_s for up to max_messages (thread)."""
        if commit:
            self.commit(self._book.to_commit())
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        if max_messages <= 1:
            return [first]
        return [first, *self._consumer.consume(max_messages - 1, 0)]

    def commit(self, offsets: dict[TopicPartitionKey, int], wait: bool = False) -> bool:
        """Commit offsets (consumer thread); a failure is logged and retried on the next commit."""
        if not offsets:
            return True
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if wait:
                self._consumer.commit(offsets=partitions, asynchronous=False)
            else:
                self._consumer.commit(offsets=partitions, asynchronous=True)
        except KafkaException as exc:
            self._failed_commit(exc.args[0], partitions)
            return False
        return True

    def _on_stats(self, stats_json: str) -> None:
        """Keep each assigned partition's consumer lag from librdkafka's statistics."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        lag: dict[TopicPartitionKey, int] = {}
        for topic, data in (stats.get("topics") or {}).items():
            for partition, figures in (data.get("partitions") or {}).items():
                behind = figures.get("consumer_lag", -1)
                if int(partition) >= 0 and behind >= 0:
                    lag[(topic, int(partition))] = behind
        self.lag = lag

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [p for p in partitions if p.error is not None]
        if error is not None:
            self._failed_commit(error, partitions)
        elif failed and failed[0].error is not None:
            self._failed_commit(failed[0].error, failed)

    def _failed_commit(self, error: KafkaError, partitions: list[TopicPartition]) -> None:
        if error.code() == KafkaError._NO_OFFSET:
            return
        logger.warning(
            "commit of %s failed: %s (retried on the next commit)", _names(partitions), error.str()
        )
        self._book.uncommit([(p.topic, p.partition) for p in partitions])

    def pause(self) -> None:
        """Stop fetching on every assigned partition (consumer thread)."""
        if not self._paused and self._assignment:
            self._consumer.pause(self._assignment)
        self._paused = True

    def resume(self) -> None:
        """Fetch again (consumer thread), except topics paused on their own."""
        resumed = [p for p in self._assignment if p.topic not in self._paused_topics]
        if self._paused and resumed:
            self._consumer.resume(resumed)
        self._paused = False

    def pause_topics(self, topics: set[str]) -> None:
        """Stop fetching the assigned partitions of these topics (consumer thread)."""
        self._paused_topics |= topics
        partitions = [p for p in self._assignment if p.topic in topics]
        if partitions:
            self._consumer.pause(partitions)

    def resume_topics(self, topics: set[str]) -> None:
        """Fetch these topics again, unless the whole consumer is paused (consumer thread)."""
        self._paused_topics -= topics
        partitions = [p for p in self._assignment if p.topic in topics]
        if partitions and not self._paused:
            self._consumer.resume(partitions)

    def close(self) -> bool:
        """Commit what is done and leave the group (consumer thread); False if the commit failed."""
        self._drain_s = 0.0  # the runner has drained already; what is left stays uncommitted
        committed = self.commit(self._book.to_commit(), wait=True)
        self._consumer.close()
        return committed

    def shutdown(self) -> None:
        """Stop the consumer thread."""
        self._thread.shutdown(wait=True)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Cooperative rebalancing hands over only the added partitions.
        self._assignment.extend(partitions)
        logger.info("assigned %s", _names(partitions))
        paused = [p for p in partitions if self._paused or p.topic in self._paused_topics]
        if paused:
            consumer.pause(paused)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        if not keys:
            return
        # Let events in flight finish before another consumer (or this one, after a
        # re-subscription) takes the partition over, so they are not routed twice. Records of
        # retry topics may wait long for their due time: they are given up at once instead
        # (the router checks its partition is still held before calling).
        waited = [k for k in keys if not k[0].endswith(RETRY_SUFFIX)]
        deadline = time.monotonic() + self._drain_s
        while self._book.in_progress(waited) and time.monotonic() < deadline:
            time.sleep(0.01)
        left = self._book.in_progress(waited)
        if left:
            logger.warning(
                "revoked %s while %d record(s) were not yet committed (at least one still in "
                "flight; finished ones wait behind it): they will be delivered again",
                _names(partitions),
                left,
            )
        self.commit(self._book.forget(keys), wait=True)
        revoked = set(keys)
        self._assignment = [p for p in self._assignment if (p.topic, p.partition) not in revoked]
        logger.info("revoked %s", _names(partitions))


class EventProducer:
    """An idempotent producer whose `send` resolves when the broker has the record.

    Delivery reports are served on the event loop's own thread by a poll timer that runs
    every `busy_poll_s` while records await their acknowledgement (and every `idle_poll_s`
    otherwise, for librdkafka's logs and errors). A poller thread would have to take the
    GIL once per report from a busy event loop, which costs far more than the report.
    """

    def __init__(
        self, kafka: KafkaConfig, busy_poll_s: float = 0.001, idle_poll_s: float = 0.5
    ) -> None:
        self._producer = Producer(producer_config(kafka))
        self._busy_poll_s = busy_poll_s
        self._idle_poll_s = idle_poll_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # whether the timer runs at the busy rate

    def start(self) -> None:
        """Start serving delivery reports on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._schedule(busy=False)

    def _schedule(self, busy: bool) -> None:
        assert self._loop is not None
        self._busy = busy
        delay_s = self._busy_poll_s if busy else self._idle_poll_s
        self._timer = self._loop.call_later(delay_s, self._poll)

    def _poll(self) -> None:
        self._producer.poll(0)
        # librdkafka's count: records not yet acknowledged, and reports not yet served.
        self._schedule(busy=len(self._producer) > 0)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Write one record and wait until the broker acknowledges it."""
        loop = self._loop
        assert loop is not None, "EventProducer.start() not called"
        future: asyncio.Future[None] = loop.create_future()
        delivered = partial(self._delivered, future, topic)
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=delivered)
                break
            except BufferError:
                # librdkafka's queue is full: the busy timer serves deliveries meanwhile.
                await asyncio.sleep(0.01)
            except KafkaException as exc:
                raise PublishError(f"cannot write to topic '{topic}': {exc.args[0]}") from None
        if not self._busy:
            assert self._timer is not None
            self._timer.cancel()
            self._schedule(busy=True)
        await future

    def _delivered(
        self, future: asyncio.Future[None], topic: str, err: KafkaError | None, msg: Message
    ) -> None:
        # Called by poll() on the event loop's thread: the future can be settled directly.
        if future.done():
            return
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(PublishError(f"cannot write to topic '{topic}': {err.str()}"))

    async def flush(self, timeout_s: float) -> int:
        """Wait for outstanding records; returns how many are still undelivered."""
        deadline = time.monotonic() + timeout_s
        while len(self._producer) and time.monotonic() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(self._busy_poll_s)
        self._producer.poll(0)
        return len(self._producer)

    def close(self) -> None:
        """Stop serving delivery reports."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def ensure_topics(kafka: KafkaConfig, topics: set[str], timeout_s: float = 10.0) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = AdminClient(base_config(kafka.bootstrap_servers))
    existing = list_topics(admin, kafka.bootstrap_servers, timeout_s)
    missing = sorted(topics - existing)
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=kafka.partitions, replication_factor=1) for t in missing],
        operation_timeout=timeout_s,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic '{topic}': {error.str()}") from None
    return created


def cluster_metadata(client: AdminClient | Consumer, bootstrap: str, timeout_s: float) -> Any:
    """The broker's metadata; a broker that does not answer is a one-line BrokerError."""
    try:
        return client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot reach the Kafka broker at {bootstrap}: {exc.args[0].str()}"
        ) from None


def list_topics(admin: AdminClient, bootstrap: str, timeout_s: float) -> set[str]:
    """The broker's topics; a broker that does not answer is a one-line BrokerError."""
    return set(cluster_metadata(admin, bootstrap, timeout_s).topics)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"

"""The router's Kafka consumer, driven from one thread, and what a consumed record says."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from logistik.config import KafkaConfig
from logistik.errors import BrokerError
from logistik.kafka.offsets import OffsetBook, TopicPartitionKey
from logistik.kafka.settings import (
    base_config,
    consumer_config,
    retry_consumer_config,
    retry_group,
)

logger = logging.getLogger(__name__)

STATS_INTERVAL_MS = 5000
PROBE_TIMEOUT_S = 5.0  # a watermark probe the broker does not answer in time tells nothing
COMMITTED_TIMEOUT_S = 5.0  # reading a group's committed offsets during a rebalance
LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]
# How long a stopping consumer lets its group finish a rebalance so that its last commit lands.
CLOSE_COMMIT_WAIT_S = 10.0
# Commit errors that mean "the group is moving; commit again once it has settled".
REBALANCE_ERRORS = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._WAIT_COORD,
    }
)


@dataclass(frozen=True, slots=True)
class FetchStall:
    """A partition whose broker holds records past the consumer's position that no fetch brings."""

    topic: str
    partition: int
    position: int  # the next offset to fetch
    high: int  # the broker's high watermark
    stable: int  # the broker's last stable offset: below `high` while a transaction is open
    since_s: float  # monotonic time since which the position has not moved

    def describe(self, now_s: float) -> str:
        """One line: which partition, how many records wait, for how long, and the likely cause."""
        waiting = self.high - self.position
        cause = (
            f"a transaction left open since offset {self.stable} holds them (a producer began it "
            "and neither committed nor aborted it; read_committed consumers wait for it)"
            if 0 <= self.stable < self.high and self.stable <= self.position
            else "the broker does not serve them"
        )
        return (
            f"{self.topic}[{self.partition}]: {waiting:,} record(s) from offset {self.position} "
            f"not fetched for {now_s - self.since_s:.0f} s: {cause}"
        )


class EventConsumer:
    """A Kafka consumer whose every call runs on one dedicated thread."""

    def __init__(
        self,
        kafka: KafkaConfig,
        book: OffsetBook,
        drain_s: float = 30.0,
        retries: bool = False,
    ) -> None:
        self._book = book
        self._drain_s = drain_s
        # The consumer of retry topics is a group of its own, so that the assignor spreads the
        # event topics' partitions over the routers whatever the retry topics count (it evens
        # out the count of partitions, not each topic's).
        self._retries = retries
        self._events_group = kafka.group_id
        self._role = "retry topics: " if retries else ""
        config = retry_consumer_config(kafka) if retries else consumer_config(kafka)
        # librdkafka stops fetching while its queue holds this much for the router to take.
        self._queue_full = (
            int(config.get("queued.min.messages", 100_000)),
            int(config.get("queued.max.messages.kbytes", 65_536)) * 1024,
        )
        self._consumer = Consumer(
            {
                **config,
                "on_commit": self._on_commit,
                "statistics.interval.ms": STATS_INTERVAL_MS,
                "stats_cb": self._on_stats,
            }
        )
        self.lag: dict[TopicPartitionKey, int] = {}  # from librdkafka's statistics
        # Fetchable partitions behind their broker's high watermark: since when each position
        # has not moved (from librdkafka's statistics, every STATS_INTERVAL_MS).
        self._behind: dict[TopicPartitionKey, FetchStall] = {}
        self._paused_at: float | None = None  # when a pause of the whole consumer began
        # Every fetchable partition's position and since when it has not moved (stats thread).
        self._positions: dict[TopicPartitionKey, tuple[int, float]] = {}
        # Caught up by the statistics, but behind by a fresh high watermark: librdkafka learns
        # the watermark from fetch answers, so a broker that stops answering fetches leaves
        # it where it was (event loop thread).
        self._probed: dict[TopicPartitionKey, FetchStall] = {}
        # Released at close: its threads would outlive the consumer (they end with the object,
        # and the consumer's callbacks hold this one in a cycle the collector cannot see).
        self._admin: AdminClient | None = AdminClient(
            {**base_config(kafka.bootstrap_servers, quiet=True), **kafka.consumer}
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-consumer")
        self._assignment: list[TopicPartition] = []
        self._paused = False
        self._paused_topics: set[str] = set()  # paused on their own, e.g. retry topics
        # Partitions paused until their next record is due (retry topics): resumed one by one.
        self._deferred: set[TopicPartitionKey] = set()
        # Where the events group left each retry partition (-1: nowhere), read once each.
        self._inherited: dict[TopicPartitionKey, int] = {}

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
        batch = (
            [first] if max_messages <= 1 else [first, *self._consumer.consume(max_messages - 1, 0)]
        )
        for message in batch:
            error = message.error()
            if error is not None and (error.fatal() or error.code() == KafkaError._FATAL):
                # A fatal consumer (fenced by another with the same group.instance.id, say)
                # never consumes again: stop rather than poll it forever.
                raise BrokerError(f"the Kafka consumer cannot go on: {error.str()}")
        return batch

    def commit(self, offsets: dict[TopicPartitionKey, int], wait: bool = False) -> bool:
        """Commit offsets (consumer thread); a failure is logged and retried on the next commit."""
        return self._commit(offsets, wait) is None

    def _commit(
        self, offsets: dict[TopicPartitionKey, int], wait: bool, quiet: bool = False
    ) -> KafkaError | None:
        if not offsets:
            return None
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if wait:
                self._consumer.commit(offsets=partitions, asynchronous=False)
            else:
                self._consumer.commit(offsets=partitions, asynchronous=True)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            self._failed_commit(error, partitions, quiet)
            return error
        return None

    def _on_stats(self, stats_json: str) -> None:
        """Keep each assigned partition's consumer lag from librdkafka's statistics."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        lag: dict[TopicPartitionKey, int] = {}
        positions: dict[TopicPartitionKey, tuple[int, int, int]] = {}
        for topic, data in (stats.get("topics") or {}).items():
            for partition, figures in (data.get("partitions") or {}).items():
                behind = figures.get("consumer_lag", -1)
                if int(partition) >= 0 and behind >= 0:
                    lag[(topic, int(partition))] = behind
                # The queue is shared by every partition: only a full one stops fetches, and
                # then the router, not the broker, holds the records back.
                if (
                    figures.get("fetchq_cnt", 0) >= self._queue_full[0]
                    or figures.get("fetchq_size", 0) >= self._queue_full[1]
                ):
                    continue
                positions[(topic, int(partition))] = (
                    int(figures.get("next_offset", -1)),
                    int(figures.get("hi_offset", -1)),
                    int(figures.get("ls_offset", -1)),
                )
        self.lag = lag
        self._watch_positions(positions, time.monotonic())

    def _watch_positions(
        self, positions: dict[TopicPartitionKey, tuple[int, int, int]], now_s: float
    ) -> None:
        """Note since when each fetchable partition behind its high watermark has not moved.

        librdkafka's own lag is counted to the last stable offset, so records held behind an
        open transaction show as no lag at all: the high watermark says they are there.
        """
        if self._paused:
            return  # a position that does not move while paused on purpose says nothing
        fetchable = {(p.topic, p.partition) for p in self._assignment if self._fetchable(p)}
        behind: dict[TopicPartitionKey, FetchStall] = {}
        still: dict[TopicPartitionKey, tuple[int, float]] = {}
        for key in fetchable:
            position, high, stable = positions.get(key, (-1, -1, -1))
            if position < 0:
                continue
            seen = self._positions.get(key)
            still[key] = (position, seen[1] if seen is not None and seen[0] == position else now_s)
            if high > position:
                # Counted from when it was first seen behind: a partition idle for an hour
                # whose first new record has not come yet is not an hour late.
                known = self._behind.get(key)
                since_s = (
                    known.since_s if known is not None and known.position == position else now_s
                )
                behind[key] = FetchStall(key[0], key[1], position, high, stable, since_s)
        self._positions = still
        self._behind = behind

    def fetch_stalls(self, after_s: float, now_s: float) -> list[FetchStall]:
        """Partitions with records waiting that no fetch has brought for `after_s` (any thread).

        Time paused on purpose does not count: a stall seen before a pause stays reported
        through it, and one not yet seen does not ripen during it.
        """
        paused_at = self._paused_at
        until_s = now_s if paused_at is None else paused_at
        held = {(p.topic, p.partition) for p in self._assignment}  # none revoked since
        found = {**self._probed, **self._behind}
        return sorted(
            (s for key, s in found.items() if key in held and until_s - s.since_s >= after_s),
            key=lambda s: (s.topic, s.partition),
        )

    async def probe_watermarks(self, after_s: float) -> None:
        """Ask the broker for the high watermark of partitions that look caught up but whose
        position has not moved for `after_s` (event loop; the request runs on a thread)."""
        if self._paused:
            return
        now_s = time.monotonic()
        quiet = {
            key: seen
            for key, seen in self._positions.items()
            if now_s - seen[1] >= after_s and key not in self._behind
        }
        if not quiet:
            self._probed = {}  # every position moved, or the statistics show them behind
            return
        highs = await asyncio.to_thread(self._high_watermarks, list(quiet))
        probed: dict[TopicPartitionKey, FetchStall] = {}
        for key, high in highs.items():
            position = quiet[key][0]
            if high <= position or self._positions.get(key, (-1, 0.0))[0] != position:
                continue
            # Counted from the first probe that found it behind, like the statistics do.
            known = self._probed.get(key)
            since_s = known.since_s if known is not None and known.position == position else now_s
            probed[key] = FetchStall(key[0], key[1], position, high, -1, since_s)
        self._probed = probed

    def _high_watermarks(self, keys: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """The brokers' high watermarks of these partitions; those not answered are left out."""
        admin = self._admin
        if admin is None:  # closed
            return {}
        try:
            futures = admin.list_offsets(
                {TopicPartition(t, p): LATEST for t, p in keys},
                isolation_level=IsolationLevel.READ_UNCOMMITTED,
                request_timeout=PROBE_TIMEOUT_S,
            )
        except (KafkaException, ValueError, TypeError):
            return {}
        highs: dict[TopicPartitionKey, int] = {}
        for partition, future in futures.items():
            try:
                highs[(partition.topic, partition.partition)] = int(
                    future.result(PROBE_TIMEOUT_S).offset
                )
            except Exception:  # not answered in time, or an error: nothing is known of it
                continue
        return highs

    def assigned(self, key: TopicPartitionKey) -> bool:
        """Whether this consumer holds the partition now (any thread)."""
        return any((p.topic, p.partition) == key for p in self._assignment)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [p for p in partitions if p.error is not None]
        if error is not None:
            self._failed_commit(error, partitions)
        elif failed and failed[0].error is not None:
            self._failed_commit(failed[0].error, failed)

    def _failed_commit(
        self, error: KafkaError, partitions: list[TopicPartition], quiet: bool = False
    ) -> None:
        if error.code() == KafkaError._NO_OFFSET:
            return
        if not quiet:
            logger.warning(
                "commit of %s failed: %s (retried on the next commit)",
                _names(partitions),
                error.str(),
            )
        self._book.uncommit([(p.topic, p.partition) for p in partitions])

    def pause(self) -> None:
        """Stop fetching on every assigned partition (consumer thread)."""
        if not self._paused and self._assignment:
            self._consumer.pause(self._assignment)
        if not self._paused:
            self._paused_at = time.monotonic()
        self._paused = True

    def resume(self) -> None:
        """Fetch again (consumer thread), except topics and partitions paused on their own."""
        resumed = [p for p in self._assignment if self._fetchable(p)]
        if self._paused and resumed:
            self._consumer.resume(resumed)
        paused_at, self._paused_at = self._paused_at, None
        if self._paused and paused_at is not None:
            paused_s = time.monotonic() - paused_at
            self._behind = {
                key: replace(stall, since_s=stall.since_s + paused_s)
                for key, stall in self._behind.items()
            }
            self._probed = {
                key: replace(stall, since_s=stall.since_s + paused_s)
                for key, stall in self._probed.items()
            }
            self._positions = {
                key: (position, since_s + paused_s)
                for key, (position, since_s) in self._positions.items()
            }
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
        partitions = [p for p in self._assignment if p.topic in topics and self._fetchable(p)]
        if partitions and not self._paused:
            self._consumer.resume(partitions)

    def defer(self, positions: list[TopicPartition]) -> None:
        """Pause each partition and rewind it to the given offset (consumer thread).

        The record at that offset is read again once `resume_deferred` is called: until then
        it is not held in memory, so it holds no commit point. A rewind that fails stops the
        consumer (BrokerError): the records after it were not routed, and must not be skipped.
        """
        assigned = {(p.topic, p.partition) for p in self._assignment}
        mine = [p for p in positions if (p.topic, p.partition) in assigned]
        if not mine:
            return
        # Pause before seek: a seek made first is forgotten by the pause (librdkafka#3471).
        self._consumer.pause(mine)
        self._deferred |= {(p.topic, p.partition) for p in mine}
        for position in mine:
            try:
                self._consumer.seek(position)
            except KafkaException as exc:
                raise BrokerError(
                    f"cannot rewind {position.topic}[{position.partition}] to offset "
                    f"{position.offset}: {exc.args[0].str()}"
                ) from exc

    def resume_deferred(self, keys: set[TopicPartitionKey]) -> None:
        """Fetch deferred partitions again, unless paused otherwise (consumer thread)."""
        self._deferred -= keys
        partitions = [
            p for p in self._assignment if (p.topic, p.partition) in keys and self._fetchable(p)
        ]
        if partitions and not self._paused:
            self._consumer.resume(partitions)

    def _fetchable(self, partition: TopicPartition) -> bool:
        return (
            partition.topic not in self._paused_topics
            and (partition.topic, partition.partition) not in self._deferred
        )

    def close(self) -> bool:
        """Commit what is done and leave the group (consumer thread); False if the commit failed."""
        self._drain_s = 0.0  # the runner has drained already; what is left stays uncommitted
        error = self._commit(self._book.to_commit(), wait=True, quiet=True)
        deadline = time.monotonic() + CLOSE_COMMIT_WAIT_S
        if error is not None and error.code() in REBALANCE_ERRORS:
            logger.info("stopping: the group is rebalancing; committing again once it settles")
        # A stop during a rebalance (another process joining or leaving) finds the group's
        # generation moving: polling lets the consumer rejoin, after which the commit lands,
        # or hands the partition over through on_revoke, which commits it. Records fetched
        # meanwhile are not routed: they stay uncommitted for whoever holds them next.
        while (
            error is not None and error.code() in REBALANCE_ERRORS and time.monotonic() < deadline
        ):
            self._consumer.poll(0.1)
            error = self._commit(self._book.to_commit(), wait=True, quiet=True)
        if error is not None:
            logger.warning("the commit at stop failed: %s", error.str())
        self._consumer.close()
        self._admin = None
        return error is None

    def shutdown(self) -> None:
        """Stop the consumer thread."""
        self._thread.shutdown(wait=True)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Cooperative rebalancing hands over only the added partitions.
        if self._retries:
            self._start_uncommitted(consumer, partitions)
        self._assignment.extend(partitions)
        logger.info("%sassigned %s", self._role, _names(partitions))
        paused = [p for p in partitions if self._paused or p.topic in self._paused_topics]
        if paused:
            consumer.pause(paused)

    def _start_uncommitted(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start uncommitted retry partitions where the events group left them, if it did.

        Routers before the retry group committed retry topics in the events group. Any other
        partition starts where this group committed it, else at its first record
        (`auto.offset.reset: earliest`): never at its end, which would skip retries. The
        events group's offsets are read once per partition (they no longer move), so a
        rebalance after a broker restart does not wait on them again.
        """
        unknown = [
            TopicPartition(p.topic, p.partition)
            for p in partitions
            if (p.topic, p.partition) not in self._inherited
        ]
        try:
            if unknown:
                found = self._committed_by(self._events_group, unknown)
                self._inherited.update({(p.topic, p.partition): -1 for p in unknown} | found)
            inherited = [
                TopicPartition(p.topic, p.partition, self._inherited[(p.topic, p.partition)])
                for p in partitions
                if self._inherited[(p.topic, p.partition)] >= 0
            ]
            if not inherited:
                return
            own = consumer.committed(
                [TopicPartition(p.topic, p.partition) for p in inherited], COMMITTED_TIMEOUT_S
            )
        except (KafkaException, TimeoutError) as exc:
            said = exc.args[0].str() if isinstance(exc, KafkaException) else "timed out"
            logger.warning(
                "retry topics: could not read where group %s left %s (%s): they start where "
                "group %s committed them, else at their first record",
                self._events_group,
                _names(partitions),
                said,
                retry_group(self._events_group),
            )
            return
        starts = {
            (p.topic, p.partition): p.offset
            for p, mine in zip(inherited, own, strict=True)
            if mine.offset < 0
        }
        if not starts:
            return
        for partition in partitions:
            partition.offset = starts.get((partition.topic, partition.partition), partition.offset)
        consumer.incremental_assign(partitions)  # with these offsets, instead of the default

    def _committed_by(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartitionKey, int]:
        """Offsets another group committed on these partitions (those it has)."""
        admin = self._admin
        if admin is None:  # closed
            return {}
        request = ConsumerGroupTopicPartitions(group, partitions)
        futures = admin.list_consumer_group_offsets([request], request_timeout=COMMITTED_TIMEOUT_S)
        answer = futures[group].result(COMMITTED_TIMEOUT_S)
        return {
            (p.topic, p.partition): p.offset
            for p in answer.topic_partitions
            if p.error is None and p.offset >= 0
        }

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        if not keys:
            return
        # Let events in flight finish before another consumer (or this one, after a
        # re-subscription) takes the partition over, so they are not routed twice. Records of
        # retry topics may wait long for their due time: they are given up at once instead
        # (the router checks its partition is still held before calling).
        waited = [] if self._retries else keys
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
        self._deferred -= revoked
        self._assignment = [p for p in self._assignment if (p.topic, p.partition) not in revoked]
        logger.info("%srevoked %s", self._role, _names(partitions))


def header_pairs(message: Message) -> list[tuple[str, bytes]]:
    """A record's headers as (name, bytes) pairs; headers without a value are left out."""
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs if v is not None]


def record_time(message: Message) -> datetime | None:
    """When a record was written (its Kafka timestamp, UTC); None when it has none."""
    kind, millis = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or millis < 0:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"

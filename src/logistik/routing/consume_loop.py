"""The consume loop: polls records, hands each to the router, commits only what is done."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import cast

from confluent_kafka import KafkaError, Message, TopicPartition

from logistik.config import KafkaConfig, RoutingConfig
from logistik.errors import InvalidEventError
from logistik.kafka import (
    EventConsumer,
    FetchStall,
    OffsetBook,
    PartitionTracker,
    TopicPartitionKey,
)
from logistik.protocol import HeaderList, retry_marks, retry_topic, retry_weight
from logistik.routing.backpressure import Backpressure
from logistik.routing.registry import Registry
from logistik.routing.router import Router, Source

logger = logging.getLogger(__name__)

MAX_BATCH = 500
POLL_TIMEOUT_S = 0.1
FETCH_CHECK_S = 1.0  # how often the loop looks for partitions whose records stopped coming
FULL_WAKE_S = 0.5  # a full loop still turns this often: commits, stop, pause
RETRY_DRAIN_S = 5.0  # at a stop, how long calls from retry topics may take to finish
# A retry record due later than this is left in Kafka (its partition rewound and paused until
# then) rather than waited for in memory, where it would hold its partition's commit point.
DEFER_MIN_S = 0.2


@dataclass(slots=True)
class Deferral:
    """A retry topic's partition rewound to a record that is not due yet."""

    offset: int  # the record read again once due; later ones come after it
    due_s: float  # monotonic time at which the partition is fetched again
    tracker: PartitionTracker  # closed once the partition is revoked: the deferral is void
    resumed: bool = False


class ConsumeLoop:
    """Consumes every topic that has a handler and routes each record as a task of its own."""

    def __init__(
        self,
        consumers: tuple[EventConsumer, EventConsumer],
        books: tuple[OffsetBook, OffsetBook],
        router: Router,
        registry: Registry,
        kafka: KafkaConfig,
        routing: RoutingConfig,
        ready: asyncio.Event | None = None,
    ) -> None:
        # One consumer reads the event topics, one (a group of its own) the retry topics.
        self._consumer, self._retry_consumer = consumers
        self._book, self._retry_book = books
        self._router = router
        self._registry = registry
        self._kafka = kafka
        self._routing = routing
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry_tasks: set[asyncio.Task[None]] = set()
        self._lanes: dict[str, str] = {}  # retry topic -> the topic its events came from
        self._lane_groups: dict[str, str] = {}  # retry topic -> its group
        self._lane_waiting: Counter[str] = Counter()
        self._lane_budgets: dict[str, int] = {}  # below retry_budget while a group is shed
        self._paused_lanes: set[str] = set()
        self._deferrals: dict[TopicPartitionKey, Deferral] = {}
        self._stopping = asyncio.Event()
        self._unknown_topics: set[str] = set()
        self._last_turn: float | None = None
        self.backpressure = Backpressure(routing.max_in_flight)
        # Retry records wait for their due time and their call in a budget per group (each
        # group has its own retry topic), so that neither a flood of retries takes the room of
        # first attempts nor one group's backlog the room of another's retries.
        self.retry_budget = routing.max_waiting_retries
        self.peak_in_flight = 0
        self.ready = ready or asyncio.Event()  # set once the first poll returned
        self.fetch_stalls: list[FetchStall] = []  # partitions whose records no fetch brings
        self._fetch_checked_s = 0.0
        self._probe: asyncio.Future[list[None]] | None = None  # of high watermarks
        self._probed_s = 0.0

    @property
    def in_flight(self) -> int:
        """Records handed to the router and not finished (retry records not counted)."""
        return len(self._tasks)

    @property
    def waiting_retries(self) -> int:
        """Retry records taken and not finished: waiting for their due time, or being called."""
        return len(self._retry_tasks)

    def age_s(self) -> float | None:
        """Seconds since the loop last turned, None before it started."""
        return None if self._last_turn is None else time.monotonic() - self._last_turn

    async def run(self, stop: asyncio.Event) -> None:
        """Poll, dispatch and commit until `stop` is set."""
        consumer, backpressure = self._consumer, self.backpressure
        commit_interval_s = self._kafka.commit_interval_ms / 1000
        subscribed: set[str] = set()
        last_commit = 0.0
        # A full loop turns often enough to see a stalled model within stalled_after_s.
        full_wake_s = min(FULL_WAKE_S, self._routing.stalled_after_s / 2)
        while not stop.is_set():
            now = self._last_turn = time.monotonic()
            self._watch_fetches(now)
            subscribed = await self._subscribe(subscribed)
            await self._pace_retries()
            await self._resume_due(now)
            commit = now - last_commit >= commit_interval_s
            if commit:
                last_commit = now
            await self._take_retries(commit)
            room = backpressure.room(self.in_flight)
            if room == 0:
                pause = backpressure.full(now)
                self._router.relieve(backpressure.full_since_s)
                if pause:
                    await consumer.run(consumer.pause)
                if backpressure.paused:
                    # Polls go on while paused so the consumer stays in its group.
                    batch = await consumer.run(partial(consumer.poll_batch, 1, 0.0, commit))
                    await self._dispatch_all(batch)
                elif commit:
                    await consumer.run(partial(consumer.commit, self._book.to_commit()))
                await backpressure.wait(stop, full_wake_s)
                continue
            if backpressure.resumed():
                await consumer.run(consumer.resume)
            if self.in_flight >= backpressure.low_water:
                # A stalled model's queue leaves before it fills the budget: once full, the
                # other models stand still until its calls are shed and new events come.
                self._router.relieve()
            take = min(MAX_BATCH, room)
            batch = await consumer.run(partial(consumer.poll_batch, take, POLL_TIMEOUT_S, commit))
            self.ready.set()
            await self._dispatch_all(batch)

    def _watch_fetches(self, now: float) -> None:
        """Log once when a partition's records stop coming though the broker holds them, and
        once when they come again; `fetch_stalls` is what /readyz and the status show."""
        if now - self._fetch_checked_s < FETCH_CHECK_S:
            return
        self._fetch_checked_s = now
        after_s = self._kafka.fetch_stalled_after_s
        probe = self._probe
        consumers = (self._consumer, self._retry_consumer)
        if probe is not None and probe.done():
            self._probe = None
            if not probe.cancelled() and (error := probe.exception()) is not None:
                logger.warning("probing the brokers' high watermarks failed: %s", error)
        if self._probe is None and now - self._probed_s >= after_s / 2:
            self._probed_s = now
            self._probe = asyncio.gather(*(c.probe_watermarks(after_s) for c in consumers))
        stalls = sorted(
            (s for c in consumers for s in c.fetch_stalls(after_s, now)),
            key=lambda s: (s.topic, s.partition),
        )
        before = {(s.topic, s.partition) for s in self.fetch_stalls}
        after = {(s.topic, s.partition) for s in stalls}
        for stall in stalls:
            if (stall.topic, stall.partition) not in before:
                logger.warning("not fetching %s", stall.describe(now))
        for topic, partition in sorted(before - after):
            if any(c.assigned((topic, partition)) for c in consumers):  # not moved elsewhere
                logger.info("%s[%d]: records are fetched again", topic, partition)
        self.fetch_stalls = stalls

    async def _subscribe(self, subscribed: set[str]) -> set[str]:
        """Follow the registry's topics and their groups' retry topics; returns what is read."""
        registry = self._registry
        topics = registry.topics()
        lane_groups = {
            retry_topic(topic, group.group_id): (topic, group.group_id)
            for topic in topics
            for group in registry.groups(topic)
        }
        lanes = {lane: topic for lane, (topic, _) in lane_groups.items()}
        wanted = topics | set(lanes)
        if wanted == subscribed or not topics:
            return subscribed
        consumer, retries = self._consumer, self._retry_consumer
        if topics != subscribed - set(self._lanes):
            await consumer.run(partial(consumer.subscribe, sorted(topics)))
            logger.info("consuming %s as group %s", ", ".join(sorted(topics)), self._kafka.group_id)
        if set(lanes) != set(self._lanes):
            await retries.run(partial(retries.subscribe, sorted(lanes)))
        self._lanes = lanes
        self._lane_groups = {lane: group_id for lane, (_, group_id) in lane_groups.items()}
        return wanted

    async def _pace_retries(self) -> None:
        """Pause a group's retry topic while its budget is full; resume at three quarters."""
        budgets = self._lane_budgets
        budgets.clear()
        for lane, group_id in self._lane_groups.items():
            budget = self._router.retry_budget(self._lanes[lane], group_id, self.retry_budget)
            if budget < self.retry_budget:
                budgets[lane] = budget
        full = {
            lane
            for lane, n in self._lane_waiting.items()
            if n >= budgets.get(lane, self.retry_budget)
        }
        pause = full - self._paused_lanes
        room = {
            lane
            for lane in self._paused_lanes
            if self._lane_waiting[lane] <= budgets.get(lane, self.retry_budget) * 3 // 4
        }
        consumer = self._retry_consumer
        if pause:
            self._paused_lanes |= pause
            await consumer.run(partial(consumer.pause_topics, pause))
        if room:
            self._paused_lanes -= room
            await consumer.run(partial(consumer.resume_topics, room))

    async def _resume_due(self, now: float) -> None:
        """Fetch again the retry partitions whose next record is due."""
        for key in [k for k, d in self._deferrals.items() if d.tracker.closed]:
            del self._deferrals[key]  # revoked: whoever holds it now reads it from its commit
        due = {
            key
            for key, deferral in self._deferrals.items()
            if not deferral.resumed and deferral.due_s <= now
        }
        if not due:
            return
        for key in due:
            self._deferrals[key].resumed = True
        consumer = self._retry_consumer
        await consumer.run(partial(consumer.resume_deferred, due))

    async def _take_retries(self, commit: bool) -> None:
        """Take what the retry topics have now, without waiting (their consumer's thread)."""
        consumer = self._retry_consumer
        if not self._lanes:
            return
        batch = await consumer.run(partial(consumer.poll_batch, MAX_BATCH, 0.0, commit))
        await self._dispatch_all(batch)

    async def _dispatch_all(self, batch: list[Message]) -> None:
        rewinds: list[TopicPartition] = []
        for message in batch:
            rewind = self._dispatch(message)
            if isinstance(rewind, TopicPartition):
                rewinds.append(rewind)
        if rewinds:  # only retry records wait in Kafka
            consumer = self._retry_consumer
            await consumer.run(partial(consumer.defer, rewinds))

    def _dispatch(self, message: Message) -> TopicPartition | bool | None:
        """Route one record; the position to rewind to when it is a retry record not due."""
        error = message.error()
        if error is not None:
            self._report(message, error)
            return None
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        # librdkafka gives a consumed record's headers as a list of pairs.
        headers = cast(HeaderList | None, message.headers())
        origin = self._lanes.get(topic)
        if origin is not None:
            wait = self._retry_wait(topic, partition, offset, headers)
            if wait is not None:
                return wait
            if self._lane_waiting[topic] >= self._lane_budgets.get(topic, self.retry_budget):
                # The group's budget filled within this poll (a bundle weighs up to 100): the
                # record is read again once the paused retry topic has room.
                tracker = self._retry_book.tracker(topic, partition)
                self._deferrals[(topic, partition)] = Deferral(offset, time.monotonic(), tracker)
                return TopicPartition(topic, partition, offset)
        tracker = (self._book if origin is None else self._retry_book).tracker(topic, partition)
        tracker.add(offset)
        source = Source(topic, partition, offset)
        if origin is not None:
            retry = asyncio.create_task(
                self._retry(tracker, source, message.value(), headers, origin)
            )
            self._retry_tasks.add(retry)
            # A bundle counts as the events it holds: the budget bounds calls waiting.
            weight = retry_weight(headers)
            self._lane_waiting[topic] += weight
            retry.add_done_callback(partial(self._retry_done, topic, weight))
            return None
        task = asyncio.create_task(self._handle(tracker, source, message.value(), headers))
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        self.peak_in_flight = max(self.peak_in_flight, len(self._tasks))
        return None

    def _retry_wait(
        self, topic: str, partition: int, offset: int, headers: HeaderList | None
    ) -> TopicPartition | bool | None:
        """Whether a retry record waits in Kafka: True to skip it (its partition is rewound to
        an earlier record), a position to rewind to when it is not due, None to take it now."""
        key = (topic, partition)
        deferral = self._deferrals.get(key)
        if deferral is not None:
            if deferral.tracker.closed or offset < deferral.offset:
                del self._deferrals[key]  # revoked, or taken again from an earlier commit
            elif offset > deferral.offset or not deferral.resumed:
                return True  # fetched before the rewind: read again after the deferred one
            else:
                del self._deferrals[key]  # the deferred record itself, now due
        try:
            due_at_s = retry_marks(headers).due_at_ms / 1000
        except InvalidEventError:
            return None  # the router sends it to the failed topic with the reason
        wait_s = min(due_at_s - time.time(), self._router.max_retry_wait_s)
        if wait_s <= DEFER_MIN_S or self._stopping.is_set():
            return None
        tracker = self._retry_book.tracker(topic, partition)
        self._deferrals[key] = Deferral(offset, time.monotonic() + wait_s, tracker)
        return TopicPartition(topic, partition, offset)

    async def _handle(
        self,
        tracker: PartitionTracker,
        source: Source,
        raw: bytes | None,
        headers: HeaderList | None,
    ) -> None:
        try:
            await self._router.handle(source, raw, headers)
        except asyncio.CancelledError:
            raise  # not finished: the offset stays uncommitted and the event is redelivered
        except Exception:
            logger.critical(
                "unexpected error on %s/%d/%d; its partition stops committing until "
                "restart so the event is not lost",
                source.topic,
                source.partition,
                source.offset,
                exc_info=True,
            )
            return
        tracker.finish(source.offset)

    def _retry_done(self, lane: str, weight: int, task: asyncio.Task[None]) -> None:
        self._retry_tasks.discard(task)
        self._lane_waiting[lane] -= weight

    async def _retry(
        self,
        tracker: PartitionTracker,
        position: Source,
        raw: bytes | None,
        headers: HeaderList | None,
        origin: str,
    ) -> None:
        def held() -> bool:
            # False once the partition went to another consumer, which takes the record again.
            return not tracker.closed

        try:
            done = await self._router.retry(position, raw, headers, self._stopping, held, origin)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.critical(
                "unexpected error on %s/%d/%d; its partition stops committing until "
                "restart so the event is not lost",
                position.topic,
                position.partition,
                position.offset,
                exc_info=True,
            )
            return
        if done:
            tracker.finish(position.offset)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.backpressure.finished(len(self._tasks))

    def _report(self, message: Message, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            topic = message.topic() or error.str()
            if topic not in self._unknown_topics:
                self._unknown_topics.add(topic)
                logger.warning("topic %s does not exist yet; waiting for it", topic)
            return
        logger.error("Kafka: %s", error.str())

    async def drain(self, grace_s: float) -> None:
        """Wait up to `grace_s` for events in flight, commit what is done, leave the group."""
        consumer = self._consumer
        self._stopping.set()  # retry records waiting for their due time are taken again later
        if self._probe is not None:
            self._probe.cancel()
        if self._retry_tasks:
            # Those still waiting for a slot after a short while are left to be taken again.
            _, waiting = await asyncio.wait(
                set(self._retry_tasks), timeout=min(grace_s, RETRY_DRAIN_S)
            )
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        if self._tasks:
            logger.info(
                "stopping: waiting up to %g s for %d event(s) in flight", grace_s, len(self._tasks)
            )
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            if pending:
                logger.warning(
                    "stopping: %d event(s) still in flight after %g s stay "
                    "uncommitted and will be redelivered",
                    len(pending),
                    grace_s,
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        retries = self._retry_consumer
        closed = await asyncio.gather(consumer.run(consumer.close), retries.run(retries.close))
        if all(closed):
            logger.info("stopped: offsets of finished events committed")
        else:
            logger.warning(
                "stopped: the last commit failed; events since the previous commit "
                "will be delivered again"
            )

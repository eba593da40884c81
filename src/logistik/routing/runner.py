"""`logistik run`: consumes every topic that has a handler and routes its events, losing none."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import aiohttp
from confluent_kafka import KafkaError, Message

from logistik.config import Config
from logistik.control.discovery import ConsulDiscovery
from logistik.control.follower import StoreFollower
from logistik.control.handler_service import HandlerService
from logistik.control.store import Store
from logistik.kafka.clients import EventConsumer, EventProducer
from logistik.observe.alerts import Alerter
from logistik.observe.figures import Figures
from logistik.observe.health import Readiness
from logistik.observe.metrics import metrics_registry
from logistik.observe.statsd import Statsd
from logistik.observe.tracing import Tracing
from logistik.protocol import replay_marks
from logistik.routing.cache import ResponseCache
from logistik.routing.model_client import ModelClient
from logistik.routing.offsets import OffsetBook, PartitionTracker
from logistik.routing.registry import Registry
from logistik.routing.router import Router, Source
from logistik.web import AppState, add_operations_routes, bind, create_app, serve

logger = logging.getLogger(__name__)

MAX_BATCH = 500
POLL_TIMEOUT_S = 0.1
FULL_WAKE_S = 0.5  # a full router still turns its loop this often: commits, stop, pause
PAUSE_AFTER_S = 5.0  # full this long, the consumer is paused so polls can go on
GC_YOUNG_THRESHOLD = 20_000  # allocations between collections of the youngest generation


class Runner:
    """The consume → route → commit loop, with back-pressure and a graceful stop."""

    def __init__(self, config: Config, tune_gc: bool = False) -> None:
        self.config = config
        self._tune_gc = tune_gc  # only when the process is logistik's own (`logistik run`)
        self.registry = Registry(config.routing.max_concurrency_per_handler)
        self.book = OffsetBook()
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()  # set when in-flight events fall to the low-water mark
        self._low_water = max(1, config.routing.max_in_flight * 3 // 4)
        self._unknown_topics: set[str] = set()
        self._router: Router | None = None
        self.peak_in_flight = 0
        self.discovery: ConsulDiscovery | None = None
        self._consumer: EventConsumer | None = None
        self.store: Store | None = None
        self._last_turn: float | None = None
        self.ready = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Events handed to the router and not finished."""
        return len(self._tasks)

    async def run(self, stop: asyncio.Event) -> None:
        """Route events until `stop` is set, then drain, commit and close."""
        web = self.config.web
        sock = bind(web.host, web.port) if web.enabled else None  # a taken port fails first
        async with AsyncExitStack() as stack:
            if sock is not None:
                stack.callback(sock.close)
            store = self.store = await Store.open(self.config.database.url)
            stack.push_async_callback(store.close)
            await store.sync(self.config.discovery.handlers, "static", delete_missing=True)
            follower = StoreFollower(store, self.registry, self.config.kafka)
            await follower.refresh()
            if not self.registry.topics():
                logger.warning("no enabled handler yet: nothing to consume until one is added")
            router, session = await self._start_router(stack)
            follower.tally = router.decoys
            self._start_discovery(stack, store, session, stop)
            if sock is not None:
                self._start_web(stack, sock, store)
            following = asyncio.create_task(
                follower.follow(stop, self.config.discovery.refresh_s), name="store-follower"
            )
            drain_s = min(30.0, self.config.routing.shutdown_grace_s)
            consumer = self._consumer = EventConsumer(self.config.kafka, self.book, drain_s)
            stack.callback(consumer.shutdown)
            if self._tune_gc:
                tune_gc()
            try:
                await self._consume(consumer, stop)
            finally:
                await self._drain(consumer)
                await following
                await follower.refresh()  # writes the last decoy counts

    async def _start_router(self, stack: AsyncExitStack) -> tuple[Router, aiohttp.ClientSession]:
        """The producer, the model client, alerts and the router; closed by the stack."""
        producer = EventProducer(self.config.kafka)
        producer.start()
        stack.callback(producer.close)
        stack.push_async_callback(self._flush, producer)
        client = await stack.enter_async_context(ModelClient())
        session = await stack.enter_async_context(aiohttp.ClientSession())
        alerter = Alerter(self.config.webhook, session)
        stack.push_async_callback(alerter.drain)
        cache = None
        if self.config.cache is not None:
            cache = ResponseCache(self.config.cache)
            stack.push_async_callback(cache.close)
        tracing = Tracing(self.config.tracing)
        statsd = None
        if self.config.statsd is not None:
            statsd = Statsd(self.config.statsd)
            await statsd.start()
            stack.callback(statsd.close)
        self._router = Router(
            self.registry, client, producer, self.config.routing, alerter, cache, tracing, statsd
        )
        return self._router, session

    def _start_discovery(
        self,
        stack: AsyncExitStack,
        store: Store,
        session: aiohttp.ClientSession,
        stop: asyncio.Event,
    ) -> None:
        if self.config.discovery.consul is None:
            return
        self.discovery = ConsulDiscovery(self.config.discovery.consul, store, session)
        watcher = asyncio.create_task(self.discovery.run(stop), name="consul-discovery")
        stack.push_async_callback(_cancelled, watcher)

    def _start_web(self, stack: AsyncExitStack, sock: socket.socket, store: Store) -> None:
        assert self._router is not None
        state = AppState(
            self.config, HandlerService(store), self._router.figures, self.registry, self.status
        )
        app = create_app(state)
        readiness = Readiness(self.config.kafka, store, self._loop_age_s)
        collectors = metrics_registry(self._router.figures, self.registry, self._lag)
        add_operations_routes(app, readiness, collectors)
        web_stop = asyncio.Event()
        server = asyncio.create_task(serve(app, sock, web_stop), name="web")

        async def stop_web() -> None:
            web_stop.set()
            await server

        stack.push_async_callback(stop_web)

    def _loop_age_s(self) -> float | None:
        """Seconds since the consume loop last turned, None before it started."""
        return None if self._last_turn is None else time.monotonic() - self._last_turn

    def _lag(self) -> dict[tuple[str, int], int]:
        return {} if self._consumer is None else self._consumer.lag

    def figures(self) -> Figures | None:
        """The router's figures once it runs."""
        return None if self._router is None else self._router.figures

    def status(self) -> dict[str, Any]:
        """The router's live status, for the API."""
        discovery = self.discovery
        return {
            "consuming": self.ready.is_set(),
            "group_id": self.config.kafka.group_id,
            "topics": sorted(self.registry.topics()),
            "in_flight": self.in_flight,
            "max_in_flight": self.config.routing.max_in_flight,
            "consul": None
            if discovery is None
            else {
                "url": self.config.discovery.consul.url if self.config.discovery.consul else None,
                "error": discovery.error,
            },
        }

    async def _consume(self, consumer: EventConsumer, stop: asyncio.Event) -> None:
        routing = self.config.routing
        commit_interval_s = self.config.kafka.commit_interval_ms / 1000
        subscribed: set[str] = set()
        paused = False
        full_since: float | None = None
        last_commit = 0.0
        while not stop.is_set():
            now = self._last_turn = time.monotonic()
            topics = self.registry.topics()
            if topics != subscribed and topics:
                await consumer.run(partial(consumer.subscribe, sorted(topics)))
                logger.info(
                    "consuming %s as group %s",
                    ", ".join(sorted(topics)),
                    self.config.kafka.group_id,
                )
                subscribed = topics
            commit = now - last_commit >= commit_interval_s
            if commit:
                last_commit = now
            in_flight = self.in_flight
            if in_flight >= routing.max_in_flight or (paused and in_flight > self._low_water):
                # Full: take nothing more until enough events finish. What librdkafka fetched
                # ahead stays in its bounded queue, ready at once; pausing would drop it and
                # cost a round of fetches (measured: routing stalled up to half a second each
                # time). Only a long wait pauses, so that polls keep the group membership.
                full_since = now if full_since is None else full_since
                if not paused and now - full_since >= PAUSE_AFTER_S:
                    await consumer.run(consumer.pause)
                    paused = True
                if paused:
                    batch = await consumer.run(partial(consumer.poll_batch, 1, 0.0, commit))
                    self._dispatch_all(batch)
                elif commit:
                    await consumer.run(partial(consumer.commit, self.book.to_commit()))
                # Woken once enough events finished, not by each one.
                self._room.clear()
                await _wait_any(self._room, stop, FULL_WAKE_S)
                continue
            full_since = None
            if paused:
                await consumer.run(consumer.resume)
                paused = False
            room = min(MAX_BATCH, routing.max_in_flight - in_flight)
            batch = await consumer.run(partial(consumer.poll_batch, room, POLL_TIMEOUT_S, commit))
            self.ready.set()
            self._dispatch_all(batch)

    def _dispatch_all(self, batch: list[Message]) -> None:
        for message in batch:
            self._dispatch(message)

    def _dispatch(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            self._report(message, error)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        tracker = self.book.tracker(topic, partition)
        tracker.add(offset)
        headers = message.headers()
        source = (
            Source(topic, partition, offset, *replay_marks(headers))
            if headers
            else Source(topic, partition, offset)
        )
        task = asyncio.create_task(self._handle(tracker, source, message.value(), headers))
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        self.peak_in_flight = max(self.peak_in_flight, len(self._tasks))

    async def _handle(
        self, tracker: PartitionTracker, source: Source, raw: bytes | None, headers: Any = None
    ) -> None:
        assert self._router is not None
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

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if len(self._tasks) <= self._low_water:
            self._room.set()

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

    async def _drain(self, consumer: EventConsumer) -> None:
        grace_s = self.config.routing.shutdown_grace_s
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
        if await consumer.run(consumer.close):
            logger.info("stopped: offsets of finished events committed")
        else:
            logger.warning(
                "stopped: the last commit failed; events since the previous commit "
                "will be delivered again"
            )

    @staticmethod
    async def _flush(producer: EventProducer) -> None:
        left = await producer.flush(10.0)
        if left:
            logger.error("%d record(s) were not delivered before exit", left)


def tune_gc() -> None:
    """Set the garbage collector up for routing: start-up objects frozen, rare collections.

    Events are freed by reference counting; the cyclic collector found 29 objects to free in
    a burst of 20,000 events, yet with Python's default thresholds it ran 1,300 times and took
    15-20 % of the router's CPU, walking the in-flight events and everything made at start-up.
    """
    gc.collect()
    gc.freeze()  # modules, the web app, the store: alive until exit, never walked again
    _, *older = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *older)


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait for it to end."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _wait_any(event: asyncio.Event, stop: asyncio.Event, timeout_s: float) -> None:
    """Wait until either event is set or the timeout passes."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    _, pending = await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    for waiter in pending:
        waiter.cancel()

"""The wiring of one `logistik run` process: builds every part, hands each its collaborators."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from confluent_kafka.admin import AdminClient
from starlette.applications import Starlette

from logistik.config import Config
from logistik.control.discovery import ConsulDiscovery
from logistik.control.follower import StoreFollower
from logistik.control.handler_service import HandlerService
from logistik.control.rollout_controller import RolloutController
from logistik.control.store import Store
from logistik.errors import BackgroundTaskError, BrokerError
from logistik.kafka import EventConsumer, EventProducer, OffsetBook, base_config, cluster_metadata
from logistik.observe.alerts import Alerter
from logistik.observe.figures import Figures
from logistik.observe.health import Readiness
from logistik.observe.logs import mask_secrets
from logistik.observe.metrics import metrics_registry
from logistik.observe.reachability import Reachability
from logistik.observe.statsd import Statsd
from logistik.observe.tracing import Tracing
from logistik.process.supervisor import Supervisor
from logistik.process.workers import Peers, WorkerRole, snapshot_app, unix_socket
from logistik.routing.cache import ResponseCache
from logistik.routing.consume_loop import ConsumeLoop
from logistik.routing.decoy import DecoyTally
from logistik.routing.model_client import ModelClient
from logistik.routing.registry import Registry
from logistik.routing.rollout_tally import RolloutTally
from logistik.routing.router import Router
from logistik.web import AppState, add_operations_routes, bind, create_app, serve

logger = logging.getLogger(__name__)

CONSUME = "consume loop"
FOLLOWER = "store follower"
DISCOVERY = "consul discovery"
REACHABILITY = "model probes"
WEB = "web server"
PRODUCER = "kafka producer"
FAILED_RECORDS = "failed-record writer"
ROLLOUTS = "rollout controller"
WORKERS = "workers watch"
FLUSH_TIMEOUT_S = 10.0
START_RETRY_BASE_S = 0.5  # first wait for a broker that does not answer at start
START_RETRY_CAP_S = 15.0
START_CHECK_TIMEOUT_S = 3.0


class Runner:
    """Runs one logistik process: router, control plane and web, until stopped or broken."""

    def __init__(
        self,
        config: Config,
        after_start: Callable[[], None] | None = None,
        role: WorkerRole | None = None,
    ) -> None:
        self.config = config
        self._after_start = after_start  # e.g. tuning the GC once start-up objects exist
        self.role = role  # one of the workers of `run --workers N`; None: the only process
        self.registry = Registry(config.routing.max_concurrency_per_handler)
        self.figures = Figures()  # what this process's router counts
        # What the web and /metrics show: the front worker's sum of every worker's figures.
        self.shown = self.figures
        self.peers: Peers | None = None
        if role is not None and role.front:
            self.shown = Figures()
            self.peers = Peers(role, self.figures, self.shown)
        self.decoys = DecoyTally()
        self.tally = RolloutTally()
        self.rollouts: RolloutController | None = None
        self._alerter: Alerter | None = None
        self.ready = asyncio.Event()  # set once the consume loop has polled
        self.store: Store | None = None
        self.discovery: ConsulDiscovery | None = None
        # built now: the web state, made before the broker answers, holds this same object
        self.reachability = Reachability(self.registry)
        self.follower: StoreFollower | None = None
        self.loop: ConsumeLoop | None = None
        self.producer: EventProducer | None = None
        self.waiting: str | None = None  # why start-up waits (for the broker), None once not
        self._consumers: tuple[EventConsumer, ...] = ()  # of event topics, of retry topics
        self._supervisor: Supervisor | None = None

    @property
    def peak_in_flight(self) -> int:
        """The most events the consume loop had in flight at once."""
        return 0 if self.loop is None else self.loop.peak_in_flight

    async def run(self, stop: asyncio.Event) -> None:
        """Route until `stop` is set, then drain, commit and close; raise if a part broke."""
        mask_secrets(self.config.secrets())
        for warning in self.config.warnings():
            logger.warning(warning)
        sock, answer_front = self._sockets()  # a taken port fails first
        halt = asyncio.Event()
        supervisor = self._supervisor = Supervisor(halt)
        relay = asyncio.create_task(_relay(stop, halt), name="stop relay")
        loop: ConsumeLoop | None = None
        follower: StoreFollower | None = None
        try:
            async with AsyncExitStack() as stack:
                if sock is not None:
                    stack.callback(sock.close)
                store = self.store = await Store.open(self.config.database.url)
                stack.push_async_callback(store.close)
                await store.sync(self.config.discovery.handlers, "static", delete_missing=True)
                if sock is not None:  # up while waiting for the broker: /readyz says why
                    self._web(stack, sock, store, supervisor)
                if answer_front is not None:
                    stack.callback(answer_front.close)
                    self._serve(stack, supervisor, snapshot_app(self.worker_snapshot), answer_front)
                follower = self.follower = StoreFollower(
                    store, self.registry, self.config.kafka, self.decoys
                )
                if not await self._when_broker_answers(follower, halt):
                    return
                if not self.registry.topics():
                    logger.warning("no enabled handler yet: nothing to consume until one is added")
                router, session = await self._router(stack, supervisor)
                self._watch(supervisor, store, follower, session, halt)
                rollouts = self.rollouts = RolloutController(store, self.tally, self._alerter)
                supervisor.start(ROLLOUTS, rollouts.run(halt))
                loop = self._consume_loop(stack, router)
                if self._after_start is not None:
                    self._after_start()
                supervisor.start(CONSUME, loop.run(halt))
                try:
                    await halt.wait()
                finally:
                    halt.set()
                    await supervisor.join(CONSUME)
                    await loop.drain(self.config.routing.shutdown_grace_s)
                    await supervisor.cancel(
                        FOLLOWER,
                        DISCOVERY,
                        REACHABILITY,
                        ROLLOUTS,
                        PRODUCER,
                        FAILED_RECORDS,
                        WORKERS,
                    )
                    await follower.final_refresh()  # writes the last decoy counts
                    await rollouts.flush()
        finally:
            relay.cancel()
        if supervisor.failure is not None:
            raise BackgroundTaskError(supervisor.failure)

    @property
    def front(self) -> bool:
        """Whether this process serves the web and watches Consul: the only one, or the
        workers' front."""
        return self.role is None or self.role.front

    def _sockets(self) -> tuple[socket.socket | None, socket.socket | None]:
        """The web's socket (the front only), and where a worker answers the front."""
        web, role = self.config.web, self.role
        sock = bind(web.host, web.port) if web.enabled and self.front else None
        if role is None or role.front:
            return sock, None
        return sock, unix_socket(role.socket_path(role.index))

    def _watch(
        self,
        supervisor: Supervisor,
        store: Store,
        follower: StoreFollower,
        session: aiohttp.ClientSession,
        halt: asyncio.Event,
    ) -> None:
        """Start the control plane's watchers: store, Consul, model probes, other workers."""
        refresh_s = self.config.discovery.refresh_s
        supervisor.start(FOLLOWER, follower.follow(halt, refresh_s))
        if not self.front:
            return  # one worker of a host watches Consul and probes models for all of them
        if self.config.discovery.consul is not None:
            self.discovery = ConsulDiscovery(self.config.discovery.consul, store, session)
            supervisor.start(DISCOVERY, self.discovery.run(halt))
        supervisor.start(REACHABILITY, self.reachability.watch(halt, refresh_s))
        if self.peers is not None:
            supervisor.start(WORKERS, self.peers.watch(halt))

    async def _when_broker_answers(self, follower: StoreFollower, halt: asyncio.Event) -> bool:
        """Load the handlers (creating their topics) once the broker answers; False if halted.

        A broker that is not there yet (started after logistik, restarting) is waited for with
        back-off, said in one line; /readyz tells why logistik is not ready meanwhile.
        """
        kafka = self.config.kafka
        admin = AdminClient(base_config(kafka.bootstrap_servers, quiet=True))
        delay_s = START_RETRY_BASE_S
        while not halt.is_set():
            try:
                await asyncio.to_thread(
                    cluster_metadata, admin, kafka.bootstrap_servers, START_CHECK_TIMEOUT_S
                )
                await follower.refresh()
            except BrokerError as exc:
                if self.waiting is None:
                    logger.warning("waiting for the Kafka broker (%s); retrying with back-off", exc)
                self.waiting = f"waiting for the Kafka broker: {exc}"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(halt.wait(), delay_s)
                delay_s = min(delay_s * 2, START_RETRY_CAP_S)
                continue
            if self.waiting is not None:
                logger.info("the Kafka broker at %s answers: starting", kafka.bootstrap_servers)
            self.waiting = None
            return True
        return False

    async def _router(
        self, stack: AsyncExitStack, supervisor: Supervisor
    ) -> tuple[Router, aiohttp.ClientSession]:
        """The producer, the model client, alerts and the router; closed by the stack."""
        config = self.config
        producer = self.producer = EventProducer(config.kafka)
        producer.start()
        stack.callback(producer.close)
        stack.push_async_callback(_flush, producer)
        supervisor.start(PRODUCER, producer.watch())
        unwritable = Breakdown()
        supervisor.start(FAILED_RECORDS, unwritable.watch())
        client = await stack.enter_async_context(
            ModelClient(max_answer_bytes=config.routing.max_answer_bytes)
        )
        session = await stack.enter_async_context(aiohttp.ClientSession())
        alerter = self._alerter = Alerter(config.webhook, session)
        stack.push_async_callback(alerter.drain)
        cache = None
        if config.cache is not None:
            cache = ResponseCache(config.cache)
            stack.push_async_callback(cache.close)
        statsd = None
        if config.statsd is not None:
            statsd = Statsd(config.statsd)
            await statsd.start()
            stack.callback(statsd.close)
        router = Router(
            self.registry,
            client,
            producer,
            config.routing,
            alerter,
            cache,
            Tracing(config.tracing),
            statsd,
            figures=self.figures,
            decoys=self.decoys,
            on_unwritable=unwritable.report,
            rollouts=self.tally,
        )
        return router, session

    def _consume_loop(self, stack: AsyncExitStack, router: Router) -> ConsumeLoop:
        books = OffsetBook(), OffsetBook()
        # A revoked partition waits this long for its events in flight before moving on.
        drain_s = min(30.0, self.config.routing.shutdown_grace_s)
        consumers = self._consumers = (
            EventConsumer(self.config.kafka, books[0], drain_s),
            EventConsumer(self.config.kafka, books[1], drain_s, retries=True),
        )
        for consumer in consumers:
            stack.callback(consumer.shutdown)
        self.loop = ConsumeLoop(
            consumers,
            books,
            router,
            self.registry,
            self.config.kafka,
            self.config.routing,
            self.ready,
        )
        return self.loop

    def _web(
        self, stack: AsyncExitStack, sock: socket.socket, store: Store, supervisor: Supervisor
    ) -> None:
        peers = self.peers
        state = AppState(
            self.config,
            HandlerService(store),
            self.shown,
            self.registry,
            self.status if peers is None else lambda: peers.status(self.status()),
            self.reachability,
            None if peers is None else peers.in_flight,
        )
        app = create_app(state)

        def tasks() -> dict[str, dict[str, Any]]:
            own = supervisor.status()
            return own if peers is None else {**own, **peers.tasks()}

        not_fetched = (
            self.not_fetched if peers is None else lambda: peers.not_fetched(self.not_fetched())
        )
        readiness = Readiness(
            self.config.kafka,
            store,
            self._loop_age_s,
            tasks,
            self._producer_state,
            lambda: self.waiting,
            self.control_errors,
            not_fetched,
        )
        stack.callback(readiness.close)  # once the web has stopped
        lag = self._lag if peers is None else lambda: peers.lag(self._lag())
        collectors = metrics_registry(self.shown, self.registry, lag, not_fetched)
        add_operations_routes(app, readiness, collectors)
        self._serve(stack, supervisor, app, sock)

    def _serve(
        self, stack: AsyncExitStack, supervisor: Supervisor, app: Starlette, sock: socket.socket
    ) -> None:
        """Serve an app on a socket as the supervised web task, stopped by the stack."""
        web_stop = asyncio.Event()
        supervisor.start(WEB, serve(app, sock, web_stop))

        async def stop_web() -> None:
            web_stop.set()
            await supervisor.join(WEB)

        stack.push_async_callback(stop_web)

    def _producer_state(self) -> tuple[str, str] | None:
        return None if self.producer is None else self.producer.state()

    def _loop_age_s(self) -> float | None:
        return None if self.loop is None else self.loop.age_s()

    def _lag(self) -> dict[tuple[str, int], int]:
        return {key: n for consumer in self._consumers for key, n in consumer.lag.items()}

    def worker_snapshot(self) -> dict[str, Any]:
        """What a worker tells the front: its status, figures, calls in flight and lag."""
        return {
            "pid": os.getpid(),
            "status": self.status(),
            "figures": self.figures.raw(),
            "instances": {i.node_id: i.in_flight for i in self.registry.live()},
            "lag": [[t, p, n] for (t, p), n in self._lag().items()],
        }

    def control_errors(self) -> dict[str, str | None]:
        """What the store follower and Consul discovery fail at while they retry (None: fine)."""
        follower, discovery = self.follower, self.discovery
        return {
            FOLLOWER: None if follower is None else follower.error,
            DISCOVERY: None if discovery is None else discovery.failure,
        }

    def not_fetched(self) -> list[dict[str, Any]]:
        """Partitions whose broker holds records that no fetch has brought for a while."""
        if self.loop is None:
            return []
        now = time.monotonic()
        return [
            {
                "topic": stall.topic,
                "partition": stall.partition,
                "waiting": stall.high - stall.position,
                "for_s": round(now - stall.since_s),
                "detail": stall.describe(now),
            }
            for stall in self.loop.fetch_stalls
        ]

    def status(self) -> dict[str, Any]:
        """The process's live status, for the API."""
        discovery, consul = self.discovery, self.config.discovery.consul
        tasks = {} if self._supervisor is None else self._supervisor.status()
        return {
            "consuming": self.ready.is_set() and tasks.get(CONSUME, {}).get("ok", False),
            "group_id": self.config.kafka.group_id,
            "topics": sorted(self.registry.topics()),
            "in_flight": 0 if self.loop is None else self.loop.in_flight,
            "max_in_flight": self.config.routing.max_in_flight,
            "retries": {
                "waiting": 0 if self.loop is None else self.loop.waiting_retries,
                "deferred": dict(self.figures.deferred),
                "taken_back": dict(self.figures.retried),
            },
            "tasks": tasks,
            "unreachable": self.reachability.unreachable(),
            "not_fetched": self.not_fetched(),
            "store": {"error": None if self.follower is None else self.follower.error},
            "consul": None
            if discovery is None or consul is None
            else {"url": consul.url, "error": discovery.error},
        }


class Breakdown:
    """A failure reported by a callback, raised by a supervised task so that the process stops."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self._reported = asyncio.Event()

    def report(self, reason: str) -> None:
        """Say why the process must stop (the first reason wins)."""
        if self._reason is None:
            self._reason = reason
            self._reported.set()

    async def watch(self) -> None:
        """Wait for a report, then raise it as a BrokerError."""
        await self._reported.wait()
        raise BrokerError(self._reason or "stopped")


async def _relay(stop: asyncio.Event, halt: asyncio.Event) -> None:
    """Halt the process when it is asked to stop."""
    await stop.wait()
    halt.set()


async def _flush(producer: EventProducer) -> None:
    left = await producer.flush(FLUSH_TIMEOUT_S)
    if left:
        logger.error("%d record(s) were not delivered before exit", left)

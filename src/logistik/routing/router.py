"""Routes one event to every group of its topic and acts on each answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from logistik.answer import Answer, Outcome
from logistik.config import RoutingConfig
from logistik.errors import InvalidEventError, PublishError, one_line
from logistik.event import Event, actor_key, channel_groups, decode_record, event_id
from logistik.handler import Handler, ModelType
from logistik.kafka import Headers
from logistik.observe.alerts import Alerter
from logistik.observe.figures import Figures
from logistik.observe.logs import EVENTS_LOGGER
from logistik.observe.statsd import Statsd
from logistik.observe.tracing import Tracing
from logistik.protocol import (
    MAX_BUNDLE_EVENTS,
    FailedRecord,
    Header,
    HeaderList,
    Reason,
    RetryMarks,
    bounded,
    bundle_entries,
    bundle_value,
    failed_topic,
    replay_marks,
    retry_marks,
    retry_topic,
)
from logistik.routing.backoff import Backoff
from logistik.routing.bundles import Bundle, RetryBundles
from logistik.routing.cache import ResponseCache
from logistik.routing.decoy import DecoyTally, agrees
from logistik.routing.registry import Circuit, Group, LiveHandler, Registry
from logistik.routing.rollout_tally import RolloutTally

logger = logging.getLogger(__name__)
events_log = logging.getLogger(EVENTS_LOGGER)

FAILED_WRITE_RETRY_CAP_S = 30.0
# A model that answered within this long and has free slots now is taken to be held back by
# the full in-flight budget (a model with no events is not).
IDLE_WINDOW_S = 1.0
# What a failed record keeps of a value the broker refused as too large.
FAILED_VALUE_KEEP_BYTES = 64 * 1024
# While a group is shed, its retry topic keeps this many events per slot of its instances
# taken (at least one bundle): enough to start a call as each one ends.
SHED_RETRY_SLOTS = 2


class ModelCaller(Protocol):
    """Calls one model with one event and classifies its answer (ModelClient, or a test's fake)."""

    async def call(
        self, handler: Handler, body: bytes, timeout_s: float, headers: dict[str, str] | None = None
    ) -> Answer:
        """Send the event; never raises for the model's faults."""
        ...


class RecordSender(Protocol):
    """Writes one record to a topic (EventProducer, or a test's fake)."""

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Resolve once the broker has the record; PublishError when it refuses it."""
        ...

    def submit(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> Awaitable[None]:
        """Hand the record on now; awaiting the result is awaiting `send`."""
        ...


@dataclass(slots=True)
class Source:
    """Where a record came from, and for a replayed record the groups it is meant for."""

    topic: str
    partition: int
    offset: int
    replays: int = 0
    only_groups: frozenset[str] | None = None


@dataclass(slots=True)
class Handover:
    """An (event, group) bound for its retry topic: the record handed on, or retries spent."""

    handler_of: LiveHandler
    nodes: tuple[str, ...]  # the instances that failed it, on this pass and earlier ones
    answer: Answer
    error: str  # what the failed record says if the retries are spent
    attempt: int
    delay_s: float
    # The producer's acknowledgement, its refusal, or None: retries spent, the failed topic.
    written: Awaitable[None] | PublishError | None
    bundled: bool = False  # in a bundle: refused, the event goes again on its own


# An (event, group) of a shed group in a bundle: the group, the instance found busy, why, and
# the bundle's acknowledgement.
Passed = tuple[Group, LiveHandler, Answer, asyncio.Future[None]]


@dataclass(slots=True)
class Delivery:
    """One event on its way to one group."""

    group: Group
    source: Source
    event: Event
    body: bytes
    attempt: int = 0  # calls already made for this (event, group), on earlier passes
    failed_nodes: tuple[str, ...] = ()  # instances that failed it on earlier passes
    since_ms: int = 0  # when it was first put on the retry topic
    retrying: bool = False  # taken back from the retry topic: off the main path, it may wait

    def failed(
        self,
        reason: str,
        error: str,
        nodes: Iterable[str] = (),
        retries: int = 0,
    ) -> FailedRecord:
        """The failed-topic record for this delivery."""
        return FailedRecord(
            self.source.topic,
            self.source.partition,
            self.source.offset,
            self.body,
            reason,
            error,
            event_id(self.event),
            self.group.group_id,
            tuple(dict.fromkeys(nodes)),
            retries,
            self.source.replays,
        )


class Router:
    """Sends events to models and publishes answers; failure is kept per (event, group)."""

    def __init__(
        self,
        registry: Registry,
        client: ModelCaller,
        producer: RecordSender,
        routing: RoutingConfig,
        alerter: Alerter | None = None,
        cache: ResponseCache | None = None,
        tracing: Tracing | None = None,
        statsd: Statsd | None = None,
        figures: Figures | None = None,
        decoys: DecoyTally | None = None,
        on_unwritable: Callable[[str], None] | None = None,
        rollouts: RolloutTally | None = None,
    ) -> None:
        self._registry = registry
        # Called when a failed record cannot be written at all: the process must stop.
        self._on_unwritable = on_unwritable
        self._client = client
        self._producer = producer
        self._routing = routing
        self._alerter = alerter
        self._cache = cache
        self.tracing = tracing or Tracing(None)
        self._statsd = statsd
        self._backoff = Backoff(
            routing.backoff_base_s, routing.backoff_cap_s, routing.retry_after_cap_s
        )
        self.max_retry_wait_s = max(routing.backoff_cap_s, routing.retry_after_cap_s)
        self.decoys = decoys or DecoyTally()
        self.rollouts = rollouts or RolloutTally()
        self.figures = figures or Figures()
        self._bundles = RetryBundles(self._write_bundle)
        self._busy_said: dict[str, tuple[float, Answer]] = {}  # by node id: when, and the answer

    def handle(
        self, source: Source, raw: bytes | None, headers: HeaderList | None = None
    ) -> Coroutine[Any, Any, None]:
        """Route one record; the coroutine returned ends when every group is done with it."""
        # Plain functions down to _dispatch hand back the coroutine to await rather than
        # awaiting it: each answer then passes through two coroutines fewer.
        if not self.tracing.enabled:
            return self._route(source, raw, headers)
        return self._traced_route(source, raw, headers)

    async def _traced_route(
        self, source: Source, raw: bytes | None, headers: HeaderList | None
    ) -> None:
        with self.tracing.event(source.topic, source.partition, source.offset, headers):
            await self._route(source, raw, headers)

    def _route(
        self, source: Source, raw: bytes | None, headers: HeaderList | None
    ) -> Coroutine[Any, Any, None]:
        self.figures.events_in[source.topic] += 1
        try:
            if headers:
                marks = replay_marks(headers)
                source.replays, source.only_groups = marks.replays, marks.only_groups
            event, body = decode_record(raw)
        except InvalidEventError as exc:
            return self._not_an_event(source, raw, exc)
        groups = self._registry.groups_for(source.topic, event)
        if source.only_groups is not None:
            groups = [g for g in groups if g.group_id in source.only_groups]
        if not groups:
            return self._unrouted(source, event, body)
        return self._dispatch(source, event, body, groups)

    async def _dispatch(
        self, source: Source, event: Event, body: bytes, groups: list[Group]
    ) -> None:
        """Deliver the event to each of its groups; returns when every group is done with it.

        A group whose model is in its shed window gets no call: the event joins its retry
        topic's bundle before the calls start, and the bundle's record is awaited after them,
        without a task, a delivery or a coroutine of its own when it is written by then.
        """
        now = time.monotonic()
        calls: list[Delivery] = []
        passed: list[Passed] = []
        deferred: list[tuple[Delivery, Handover]] = []
        for group in groups:
            instance = self._shed_instance(group, now)
            if instance is not None:
                held = self._pass_on(group, instance, source, body, now)
                if held is not None:
                    passed.append(held)
                    continue
                delivery = Delivery(group, source, event, body)
                deferral = self._held_alone(delivery, instance, now)
                if deferral is not None:
                    deferred.append((delivery, deferral))
                    continue
            calls.append(Delivery(group, source, event, body))
        try:
            if len(calls) == 1:
                await self._deliver(calls[0])
            elif calls:
                await asyncio.gather(*(self._deliver(delivery) for delivery in calls))
            for group, instance, answer, written in passed:
                # Most bundles are acknowledged by now: nothing to wait for.
                if written.done() and not (written.cancelled() or written.exception()):
                    self._passed_on(source, group, event, answer)
                    continue
                deferral = Handover(
                    instance, (), answer, answer.error, 0, 0.0, written, bundled=True
                )
                deferred.append((Delivery(group, source, event, body), deferral))
            for delivery, deferral in deferred:
                await self._deliver(delivery, deferral)
        except asyncio.CancelledError:
            # The event stays unfinished; a refusal that comes later is nobody's to read.
            _abandon([written for *_, written in passed] + [d.written for _, d in deferred])
            raise

    def _pass_on(
        self, group: Group, instance: LiveHandler, source: Source, body: bytes, now: float
    ) -> Passed | None:
        """Add an (event, group) of a shed group to its retry topic's bundle; None when it must
        go on its own (see `_bundled`), or adding it failed (it then goes alone, or is called).

        Thousands a second pass here while a model is shed: this is the bundle path of
        `_bundled`, without the objects a lone retry record needs.
        """
        try:
            answer = self._held_busy(instance, now)
            written = self._join_bundle(group, source, body, answer)
            if written is not None:
                # Still shed while its events keep coming: the window runs from the last.
                for shed in group.production:
                    self._shed(shed, now)
        except Exception:
            logger.exception("passing an event of %s on failed", group.group_id)
            return None
        if written is None:
            return None
        return group, instance, answer, written

    def _held_alone(self, delivery: Delivery, instance: LiveHandler, now: float) -> Handover | None:
        """Start an (event, group) of a shed group on its way to the retry topic in a record of
        its own; None if that failed (the call path then tries, and says why)."""
        for shed in delivery.group.production:
            self._shed(shed, now)
        try:
            answer = self._held_busy(instance, now)
            return self._defer(delivery, instance, [], answer)
        except Exception:
            logger.exception("passing an event of %s on failed", delivery.group.group_id)
            return None

    def _held_busy(self, instance: LiveHandler, now: float) -> Answer:
        """`_held_busy(instance)`, said again for a second: a busy model's events pass by the
        thousand, and what held the first of them holds the next."""
        said = self._busy_said.get(instance.node_id)
        if said is None or now - said[0] >= 1.0:
            if len(self._busy_said) > 1000:  # node ids of instances long gone
                self._busy_said.clear()
            said = (now, _held_busy(instance))
            self._busy_said[instance.node_id] = said
        return said[1]

    def _bundled(
        self,
        delivery: Delivery,
        instance: LiveHandler,
        answer: Answer,
        nodes: tuple[str, ...] = (),
    ) -> Handover | None:
        """A held event in its partition's bundle; None when it must go on its own."""
        written = self._join_bundle(delivery.group, delivery.source, delivery.body, answer, nodes)
        if written is None:
            return None
        return Handover(instance, nodes, answer, answer.error, 0, 0.0, written, bundled=True)

    def _join_bundle(
        self,
        group: Group,
        source: Source,
        body: bytes,
        answer: Answer,
        nodes: tuple[str, ...] = (),
    ) -> asyncio.Future[None] | None:
        """Add a held event to its partition's bundle: the bundle's acknowledgement; None when
        it must go on its own (a replay, a traced event, a large one: what a bundle cannot say
        for each event; or one waiting for a circuit's probe, due when the probe is)."""
        if (
            source.replays
            or source.only_groups is not None
            or self.tracing.enabled
            or answer.retry_after_s
        ):
            return None
        return self._bundles.add(
            retry_topic(group.topic, group.group_id),
            group.group_id,
            source.topic,
            source.partition,
            source.offset,
            body,
            answer.error,
            nodes,
        )

    def _write_bundle(self, bundle: Bundle) -> None:
        """Hand a bundle's record to the producer; its future settles the bundle's."""
        now = time.time()
        delay_s = self._backoff.delay_s(1, 0.0)
        marks = RetryMarks(
            bundle.group_id,
            0,
            int((now + delay_s) * 1000),
            bundle.topic,
            bundle.partition,
            bundle.entries[0][0],
            bundle.nodes,
            one_line(bundle.error, 500),
            0,
            bundle.since_ms,
            len(bundle.entries),
        )
        value = bundle_value(bundle.entries)
        written = self._producer.submit(bundle.retry_topic, value, None, marks.headers())
        asyncio.ensure_future(written).add_done_callback(partial(_settle, bundle.written))

    def _shed_instance(self, group: Group, now: float) -> LiveHandler | None:
        """An instance of a group whose every production instance is in its shed window: its
        events go to the retry topic with no call and no wait. None if any could be called, or
        the group has canaries, decoys, a shadowing rollout or a cache (they take other paths).
        """
        production = group.production
        if not production or group.canaries or group.decoys or self._cache is not None:
            return None
        for instance in production:
            if now >= instance.shed_until or instance.circuit is not Circuit.CLOSED:
                return None
        if self.rollouts.shadowing(group):
            return None
        return production[0]

    async def _unrouted(self, source: Source, event: Event, body: bytes) -> None:
        """An event whose channel list or replay names no group of its topic: failed, said so."""
        named = source.only_groups
        if named is None:
            named = channel_groups(event)
            if named is None:
                return  # no group reads this topic (any more): nothing is expected of it
        error = (
            f"names group(s) {', '.join(sorted(named)) or '-'} that do not handle topic "
            f"{source.topic}"
        )
        record = FailedRecord(
            source.topic,
            source.partition,
            source.offset,
            body,
            Reason.NO_HANDLER,
            f"the event {error}",
            event_id(event),
            replays=source.replays,
        )
        logger.warning(
            "event %s %s: sent to %s", event_id(event), error, failed_topic(source.topic)
        )
        await self.write_failed(failed_topic(source.topic), record)

    async def retry(
        self,
        position: Source,
        raw: bytes | None,
        headers: HeaderList | None,
        stopping: asyncio.Event | None = None,
        held: Callable[[], bool] | None = None,
        origin: str | None = None,
    ) -> bool:
        """Handle one record of a retry topic: once it is due, one more call for its group.

        Returns False when the record was left for later: the process is `stopping`, or its
        partition is no longer `held`; it is then taken again, by this process or another.
        """
        try:
            marks = retry_marks(headers)
            if origin is not None and position.topic != retry_topic(marks.topic, marks.group_id):
                # Headers are producer input: they may not send the event to another topic.
                raise InvalidEventError(
                    Reason.INVALID_HEADER,
                    f"a retry record for group {marks.group_id} of topic {marks.topic} "
                    f"on {position.topic}",
                )
            if marks.bundle:
                entries = bundle_entries(raw, marks.bundle)
                events = None
            else:
                events = [(marks.offset, *decode_record(raw))]
        except InvalidEventError as exc:
            await self._invalid_retry(position, raw, exc, origin)
            return True
        # A due time far off cannot come from logistik's own back-off: it is not waited for.
        wait_s = min(marks.due_at_ms / 1000 - time.time(), self.max_retry_wait_s)
        if wait_s > 0:
            if stopping is None:
                await asyncio.sleep(wait_s)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), wait_s)
        if (stopping is not None and stopping.is_set()) or (held is not None and not held()):
            return False
        if events is None:
            events = await self._unbundled(marks, entries)
        group = self._registry.group(marks.topic, marks.group_id)
        gone = group is None or not (group.answerable or group.down)
        deliveries = [
            Delivery(
                group if group is not None and not gone else Group(marks.group_id, marks.topic),
                Source(marks.topic, marks.partition, offset, marks.replays),
                event,
                body,
                marks.attempt,
                marks.failed_nodes,
                marks.since_ms,
                not gone,
            )
            for offset, event, body in events
        ]
        if gone:
            error = f"group {marks.group_id} no longer handles topic {marks.topic}"
            for delivery in deliveries:
                await self._give_up(delivery, [], Reason.NO_HANDLER, error, marks.attempt)
        else:
            with self.tracing.resume(headers):
                if len(deliveries) == 1:
                    await self._deliver(deliveries[0])
                else:
                    await asyncio.gather(*(self._deliver(d) for d in deliveries))
        self.figures.retried[marks.topic] += len(deliveries)
        return True

    async def _unbundled(
        self, marks: RetryMarks, entries: list[tuple[int, bytes]]
    ) -> list[tuple[int, Event, bytes]]:
        """The events of a bundle; one that is not an event goes to the failed topic."""
        events: list[tuple[int, Event, bytes]] = []
        for offset, raw in entries:
            try:
                events.append((offset, *decode_record(raw)))
            except InvalidEventError as exc:
                source = Source(marks.topic, marks.partition, offset, marks.replays)
                await self._not_an_event(source, raw, exc, marks.group_id)
        return events

    async def _not_an_event(
        self, source: Source, raw: bytes | None, exc: InvalidEventError, group_id: str = ""
    ) -> None:
        """A record of `source` that is not an event: to its failed topic, said in one line."""
        topic = failed_topic(source.topic)
        logger.warning(
            "%s/%d/%d is not a valid event (%s): sent to %s",
            source.topic,
            source.partition,
            source.offset,
            exc,
            topic,
        )
        record = FailedRecord(
            source.topic,
            source.partition,
            source.offset,
            raw,
            exc.reason,
            str(exc),
            group_id=group_id,
            replays=source.replays,
        )
        await self.write_failed(topic, record)

    async def _invalid_retry(
        self, position: Source, raw: bytes | None, exc: InvalidEventError, origin: str | None
    ) -> None:
        topic = failed_topic(origin or position.topic)
        logger.warning(
            "%s/%d/%d is not a retry record logistik wrote (%s): sent to %s",
            position.topic,
            position.partition,
            position.offset,
            exc,
            topic,
        )
        record = FailedRecord(
            position.topic, position.partition, position.offset, raw, exc.reason, str(exc)
        )
        await self.write_failed(topic, record)

    async def _deliver(self, delivery: Delivery, deferral: Handover | None = None) -> None:
        """Get one answer from the group (decoys alongside), or finish its `deferral` to the
        retry topic; never raises."""
        try:
            # Shadows compare first answers: a replay or a retry is for recovery only.
            shadow = delivery.attempt == 0 and delivery.source.only_groups is None
            if deferral is not None:
                await self._deferred(delivery, deferral)
            elif shadow and (delivery.group.decoys or self.rollouts.shadowing(delivery.group)):
                await self._shadowed(delivery)
            else:
                await self._answer(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not stall the partition: record the event
            logger.exception(
                "internal error routing event %s to %s",
                event_id(delivery.event),
                delivery.group.group_id,
            )
            record = delivery.failed(Reason.INTERNAL, f"internal error: {exc!r}")
            await self.write_failed(failed_topic(delivery.group.topic), record)

    async def _shadowed(self, delivery: Delivery) -> None:
        """Answer as usual while every decoy gets the event too; compare, never publish.

        Under a rollout with a shadow share, production shadows some of the canary's events.
        """
        now = time.monotonic()
        decoys = [d for d in delivery.group.decoys if d.callable(now)]
        decoys += self.rollouts.shadows(delivery.group, delivery.event)
        shadows = asyncio.gather(*(self._call(decoy, delivery.body) for decoy in decoys))
        try:
            answer = await self._answer(delivery)
        finally:
            decoy_answers = await shadows
        if answer is None:
            return
        for decoy, decoy_answer in zip(decoys, decoy_answers, strict=True):
            if not decoy_answer.held:  # a busy decoy was not asked: nothing to compare
                agreed = agrees(answer, decoy_answer)
                if decoy.handler.model_type is ModelType.DECOY:
                    self.decoys.record(decoy.node_id, agreed)
                self.rollouts.compared(decoy.handler, agreed)

    def _answer(self, delivery: Delivery) -> Coroutine[Any, Any, Answer | None]:
        """Get one answer from the group (or the cache); None when the event failed."""
        group = delivery.group
        if not group.answerable:
            return self._unanswerable(delivery)
        pool = group.answering_pool(delivery.event)
        if self._cache is not None:
            return self._answer_cached(delivery, pool)
        return self._ask(delivery, pool, None)

    async def _unanswerable(self, delivery: Delivery) -> None:
        """Fail the event when no instance of its group is up; None."""
        group = delivery.group
        if group.down:
            error = f"no instance of group {group.group_id} is up (down: {', '.join(group.down)})"
            attempt = delivery.attempt
            await self._give_up(delivery, [], Reason.NO_HANDLER, error, attempt, group.down)

    async def _answer_cached(self, delivery: Delivery, pool: list[LiveHandler]) -> Answer | None:
        """The cached answer to the event when there is one; else one from the pool."""
        assert self._cache is not None
        key = self._cache.key(pool[0].handler, delivery.event)
        cached = await self._cache.get(key)
        if cached is not None:
            return await self._publish_cached(delivery, pool[0], cached)
        return await self._ask(delivery, pool, key)

    async def _publish_cached(
        self,
        delivery: Delivery,
        instance: LiveHandler,
        body: bytes,
    ) -> Answer | None:
        answer = Answer(Outcome.OK, 200, body=body)
        if not await self._publish(delivery, instance, answer, cached=True):
            return None
        self._done(delivery, instance, answer, "published from the cache")
        return answer

    async def _ask(
        self,
        delivery: Delivery,
        pool: list[LiveHandler],
        key: str | None,
    ) -> Answer | None:
        """One call to the pool; a retryable failure goes to the retry topic. None if not done.

        Only one call happens here, so a failing or slow model holds its event (and with it
        the commit point of its partition and the other groups' share of the in-flight
        budget) for at most one call's timeout; further calls wait on the retry topic.
        """
        instance = delivery.group.pick(pool, delivery.failed_nodes)
        if instance is None:
            answer = Answer(
                Outcome.RETRY,
                None,
                error=_all_open(pool),
                retry_after_s=_until_probe(pool),
                held=True,
            )
        else:
            answer = await self._call(
                instance, delivery.body, delivery.attempt > 0, patient=delivery.retrying
            )
        outcome = answer.outcome
        if outcome is Outcome.OK:
            assert instance is not None
            if not await self._publish(delivery, instance, answer):
                return None
            if key is not None and self._cache is not None:
                self._cache.put(key, answer.body)
            self._done(delivery, instance, answer, f"published to {instance.handler.return_to}")
            return answer
        if outcome is Outcome.IGNORED or outcome is Outcome.DUPLICATE:
            assert instance is not None
            self._done(delivery, instance, answer, outcome.value)
            return answer
        failed = [instance] if instance is not None else []
        if outcome is Outcome.REJECTED:
            await self._give_up(
                delivery,
                failed,
                Reason.REJECTED,
                answer.error,
                delivery.attempt,
                delivery.failed_nodes,
            )
            return None
        await self._retry_later(delivery, instance or pool[0], failed, answer)
        return None

    async def _retry_later(
        self, delivery: Delivery, handler_of: LiveHandler, failed: list[LiveHandler], answer: Answer
    ) -> None:
        """Put the (event, group) on its topic's retry topic, or fail it once retries are spent."""
        deferral = None
        if answer.held and not (delivery.retrying or delivery.attempt or delivery.since_ms):
            # Its first wait: nothing to carry on but the instances found busy.
            nodes = tuple(i.node_id for i in failed)
            deferral = self._bundled(delivery, handler_of, answer, nodes)
        if deferral is None:
            deferral = self._defer(delivery, handler_of, failed, answer)
        await self._deferred(delivery, deferral)

    def _defer(
        self, delivery: Delivery, handler_of: LiveHandler, failed: list[LiveHandler], answer: Answer
    ) -> Handover:
        """Hand the (event, group)'s retry record to the producer, unless its retries are spent."""
        nodes = tuple(dict.fromkeys([*delivery.failed_nodes, *(i.node_id for i in failed)]))
        now = time.time()
        since_ms = delivery.since_ms or int(now * 1000)
        error = answer.error
        if answer.held:
            # No call was made: the wait uses no retry, but is bounded.
            held_s = now - since_ms / 1000
            spent = held_s >= self._routing.max_hold_s
            error = f"{error}; no instance could take it for {held_s:.0f} s" if spent else error
            attempt = delivery.attempt
            delay_s = self._backoff.delay_s(1, answer.retry_after_s)
        else:
            spent = delivery.attempt >= self._retries(handler_of)
            attempt = delivery.attempt + 1
            delay_s = self._backoff.delay_s(attempt, answer.retry_after_s)
        if spent:
            return Handover(handler_of, nodes, answer, error, attempt, delay_s, None)
        source, group = delivery.source, delivery.group
        marks = RetryMarks(
            group.group_id,
            attempt,
            int((now + delay_s) * 1000),
            source.topic,
            source.partition,
            source.offset,
            nodes,
            one_line(answer.error, 500),
            source.replays,
            since_ms,
        )
        topic = retry_topic(group.topic, group.group_id)
        headers = marks.headers()
        if self.tracing.enabled:  # the retry's calls belong to the event's trace
            headers.extend(self.tracing.kafka_headers())
        try:
            written: Awaitable[None] = self._producer.submit(
                topic, delivery.body, actor_key(delivery.event), headers
            )
        except PublishError as exc:
            return Handover(handler_of, nodes, answer, error, attempt, delay_s, exc)
        return Handover(handler_of, nodes, answer, error, attempt, delay_s, written)

    async def _deferred(self, delivery: Delivery, deferral: Handover) -> None:
        """Wait for the retry record to be taken; the failed topic if it is not, or if the
        retries were spent."""
        if deferral.written is None:
            await self._give_up(
                delivery,
                [deferral.handler_of],
                Reason.RETRIES_EXHAUSTED,
                deferral.error,
                delivery.attempt,
                deferral.nodes,
            )
            return
        answer, written = deferral.answer, deferral.written
        try:
            if isinstance(written, PublishError):
                raise written
            # A bundle's future is every member's: cancelling one member must not cancel it.
            await (asyncio.shield(written) if deferral.bundled else written)
        except PublishError as exc:
            if deferral.bundled:  # alone now, still preferring another instance
                failed = [deferral.handler_of] if deferral.nodes else []
                deferral = self._defer(delivery, deferral.handler_of, failed, answer)
                await self._deferred(delivery, deferral)
                return
            error = f"{answer.error}; the retry topic refused it: {exc}"
            await self._give_up(
                delivery,
                [deferral.handler_of],
                Reason.RETRIES_EXHAUSTED,
                error,
                delivery.attempt,
                deferral.nodes,
            )
            return
        self._passed_on(delivery.source, delivery.group, delivery.event, deferral)

    def _passed_on(
        self, source: Source, group: Group, event: Event, held: Answer | Handover
    ) -> None:
        """Count and log an (event, group) the retry topic has taken: in a bundle, its model
        found busy (`held`), or in a record of its own (its Handover)."""
        self.figures.deferred[source.topic] += 1
        if isinstance(held, Answer):
            answer, attempt, when = held, 0, "in a bundle"
        else:
            answer, attempt = held.answer, held.attempt
            when = "in a bundle" if held.bundled else f"in {held.delay_s:.1f} s"
        # An event no call was made for (its model busy or its circuit open) is logged at
        # debug: thousands a second may pass to the retry topic while one warning says why,
        # and its outcome is logged once it is called.
        level = logging.DEBUG if answer.held else logging.INFO
        if events_log.isEnabledFor(level):
            ident = event_id(event)
            events_log.log(
                level,
                "event %s group %s: %s; retry %d %s",
                ident,
                group.group_id,
                answer.error,
                attempt,
                when,
                extra={
                    "event_id": ident,
                    "topic": source.topic,
                    "group": group.group_id,
                    "outcome": "retry",
                },
            )

    def _retries(self, instance: LiveHandler) -> int:
        retries = instance.handler.retries
        return retries if retries is not None else self._routing.retries

    async def _call(
        self, instance: LiveHandler, body: bytes, retry: bool = False, patient: bool = False
    ) -> Answer:
        """One call; the circuit is kept.

        On the main path (not `patient`) the call's deadline covers its wait for a free slot
        (at most half of it), and while another model sits idle for want of the in-flight
        budget a call that would queue long does not wait at all: its event must not hold the
        other groups. Calls taken back from the retry topic are off the main path: they wait
        for a slot as long as it takes (their number is bounded by the retry budget), rather
        than go round the retry topic again.
        """
        handler = instance.handler
        timeout_s = handler.timeout_s or self._routing.timeout_s
        slots = instance.slots
        max_wait_s = self._routing.max_queue_wait_s
        # While calls from the retry topic wait for this instance, or for a while after a call
        # waited too long, new events join the retry topic rather than queue here.
        now = time.monotonic()
        # A queue that holds nobody back is waited in: the retry topic would only add work.
        if not patient and (
            now < instance.shed_until
            or (
                (instance.patient_waiting or slots.oldest_wait_s(now) > max_wait_s)
                and self._holds_others(instance, now)
            )
        ):
            self._shed(instance, now)
            instance.end_probe()
            return _held_busy(instance)
        # Counted before waiting for a slot so the load spread sees queued calls too.
        instance.in_flight += 1
        started = now
        try:
            if patient:
                instance.patient_waiting += 1
                try:
                    await slots.acquire(None)
                finally:
                    instance.patient_waiting -= 1
            elif not await slots.acquire(
                timeout_s / 2, lambda: self._waits_on(instance, timeout_s / 2)
            ):
                # Shed by `relieve`, or no slot in half the deadline while the model stopped
                # answering or its queue held others back: the retry topic.
                if self._holds_others(instance, now := time.monotonic()):
                    self._shed(instance, now)
                instance.end_probe()
                return _held_busy(instance)
            if instance.circuit is Circuit.OPEN:  # it opened while this call waited
                slots.release()
                return _held_open(instance, timeout_s)
            try:
                waited_s = time.monotonic() - started
                # On the main path the deadline covers the wait (up to half of it), rounded
                # so that the client keeps few timeouts.
                short = not patient and waited_s >= 0.001
                left_s = round(max(timeout_s - waited_s, timeout_s / 2), 1) if short else timeout_s
                if self.tracing.enabled:
                    answer = await self._traced_call(instance, body, left_s, retry)
                else:
                    answer = await self._client.call(handler, body, left_s)
            finally:
                slots.release()
        except asyncio.CancelledError:
            instance.end_probe()
            raise
        finally:
            instance.in_flight -= 1
        self.figures.call(instance.node_id, answer, retry)
        self.rollouts.call(handler, answer)
        if self._statsd is not None:
            self._statsd.call(handler.name, answer)
        if answer.outcome is Outcome.RETRY:
            if answer.counts:
                self._failed_call(instance, answer)
        elif instance.record_success():
            logger.info("circuit of %s closed: it answers again", instance.node_id)
        return answer

    def relieve(self, full_since_s: float | None = None) -> int:
        """Called while the in-flight budget is (three quarters) full: the queued calls of a
        model that stopped answering go to its retry topic when another model answers or sits
        idle meanwhile; those of a model whose queue is longer than max_queue_wait_s when
        another model that was answering sits idle.

        `full_since_s` (monotonic) is when the budget filled: a model that was answering then
        and is idle now is held back however long ago its last answer was, since the full
        budget gives it nothing to answer. Returns how many calls were let go. A model alone,
        or beside models that answer nothing either, keeps its queue, as does a slow model that
        answers while every other one is busy: the budget is then full because there is more
        work than models, and the retry topic would only add to it. A model that answers
        nothing is another matter: the models that answer will soon have drained their queues
        and stand idle behind its own.
        """
        now = time.monotonic()
        stall_s, max_wait_s = self._routing.stalled_after_s, self._routing.max_queue_wait_s
        live = self._registry.live()
        # Without this anchor a loop that turned late (a pause of the process, a slow poll)
        # would find the idle model's last answer past the window, and the queue would hold
        # the budget until half its calls' deadline.
        seen_s = now if full_since_s is None else min(now, full_since_s)
        held = any(_held_back(i, seen_s) for i in live)
        answering = any(now - i.slots.last_release_s < stall_s for i in live)
        if not (held or answering):
            return 0
        total = 0
        for instance in live:
            slots = instance.slots
            oldest_s = slots.oldest_wait_s(now)
            # Calls queued for the whole window and no slot freed in it: it answered nothing.
            silent = now - slots.last_release_s >= stall_s and oldest_s >= stall_s
            if not silent and (oldest_s <= max_wait_s or not held):
                continue
            if silent:
                last_s = slots.last_release_s
                why = (
                    f"{instance.node_id} has answered nothing "
                    f"{f'for {now - last_s:.1f} s' if last_s else 'yet'} while "
                    f"{slots.waiting} call(s) waited for its {instance.max_concurrency} slots"
                )
            else:
                why = _busy(instance)
            shed = slots.shed()
            if shed:  # else only calls from the retry topic wait: they hold no budget
                self._shed(instance, now, f"{why} and held the in-flight budget others need")
                total += shed
        return total

    def retry_budget(self, topic: str, group_id: str, budget: int) -> int:
        """How many events of a group's retry topic may wait at once: `budget`, or, while the
        group's new events are shed (its model is the limit), what its slots can start soon.

        A shed model takes its retries at its own pace: events taken far ahead of it would only
        wait in memory, and taking them costs the other groups' events the router's time.
        """
        group = self._registry.group(topic, group_id)
        if group is None or not group.production:
            return budget
        now = time.monotonic()
        slots = 0
        for instance in group.production:
            if now >= instance.shed_until:
                return budget
            slots += instance.max_concurrency
        return min(budget, max(MAX_BUNDLE_EVENTS, SHED_RETRY_SLOTS * slots))

    def _waits_on(self, instance: LiveHandler, window_s: float) -> bool:
        """Whether a call that has waited `window_s` for a slot waits on: the model answered
        within it and holds no other model back.

        When every model is busy the router itself is the limit: sending the queue round the
        retry topic would only add a write and a read to each of its events.
        """
        now = time.monotonic()
        return (
            now - instance.slots.last_release_s < window_s
            and instance.circuit is Circuit.CLOSED
            and now >= instance.shed_until
            and not self._holds_others(instance, now)
        )

    def _holds_others(self, instance: LiveHandler, now: float) -> bool:
        """Whether another model that was answering sits idle: the queue of `instance` may be
        what holds it back."""
        return any(i is not instance and _held_back(i, now) for i in self._registry.live())

    def _shed(self, instance: LiveHandler, now: float, why: str | None = None) -> None:
        """New events of `instance` go to its retry topic for max_queue_wait_s; one line says
        so when this starts."""
        if now >= instance.shed_until:
            logger.warning("%s: its events go to its retry topic for now", why or _busy(instance))
        instance.shed_until = max(instance.shed_until, now + self._routing.max_queue_wait_s)

    def _failed_call(self, instance: LiveHandler, answer: Answer) -> None:
        routing = self._routing
        changed = instance.record_failure(
            answer.error,
            answer.status is not None,
            routing.unhealthy_after_failures,
            routing.unhealthy_cooldown_s,
            routing.circuit_open_max_s,
        )
        if changed is Circuit.OPEN:
            logger.warning(
                "circuit of %s opened after %d calls in a row without an answer (last: %s): "
                "no calls for %g s, then one probe",
                instance.node_id,
                instance.unanswered,
                answer.error,
                instance.cooldown_s,
            )
        elif changed is Circuit.CLOSED:
            logger.info("circuit of %s closed: it answers again", instance.node_id)
        self._keeps_failing(instance, answer)

    async def _traced_call(
        self, instance: LiveHandler, body: bytes, timeout_s: float, retry: bool
    ) -> Answer:
        """A model call inside its own span, the trace context sent along."""
        handler = instance.handler
        with self.tracing.call(handler.node_id, handler.url) as headers:
            answer = await self._client.call(handler, body, timeout_s, headers)
            self.tracing.annotate(
                **{
                    "http.response.status_code": answer.status or 0,
                    "logistik.outcome": answer.kind,
                    "logistik.retry": retry,
                }
            )
        return answer

    def _keeps_failing(self, instance: LiveHandler, answer: Answer) -> None:
        """Alert once when an answering instance fails many calls in a row."""
        alerter, handler = self._alerter, instance.handler
        if alerter is None or handler.model_type.value not in ("model", "canary"):
            return
        if instance.consecutive_failures == alerter.failing_after:
            alerter.failed(
                handler.event,
                handler.group_id,
                [handler],
                "",
                f"{instance.consecutive_failures} calls in a row failed; last: {answer.error}",
            )

    def _done(self, delivery: Delivery, instance: LiveHandler, answer: Answer, what: str) -> None:
        """Log the outcome of one (event, group) and clear the group's alert."""
        if self._alerter is not None:
            self._alerter.recovered(delivery.group.topic, delivery.group.group_id)
        if events_log.isEnabledFor(logging.INFO):
            ident = event_id(delivery.event)
            events_log.info(
                "event %s group %s -> %s: %s",
                ident,
                delivery.group.group_id,
                instance.node_id,
                what,
                extra={
                    "event_id": ident,
                    "topic": delivery.source.topic,
                    "group": delivery.group.group_id,
                    "node_id": instance.node_id,
                    "outcome": answer.kind,
                },
            )

    async def _publish(
        self, delivery: Delivery, instance: LiveHandler, answer: Answer, cached: bool = False
    ) -> bool:
        """Publish an answer to the handler's return topic; False if it went to the failed one."""
        handler = instance.handler
        assert handler.return_to is not None  # only routable handlers answer
        headers: Headers = [
            (Header.EVENT_ID, bounded(event_id(delivery.event))),
            (Header.NODE_ID, bounded(handler.node_id)),
            (Header.VERSION, bounded(handler.version)),
            (Header.MODEL_TYPE, handler.model_type.value.encode()),
        ]
        if cached:
            headers.append((Header.CACHE, b"hit"))
        if self.tracing.enabled:
            headers.extend(self.tracing.kafka_headers())
        key = actor_key(delivery.event)
        try:
            await self._producer.submit(handler.return_to, answer.body, key, headers)
        except PublishError as exc:
            await self._give_up(delivery, [instance], Reason.PUBLISH_FAILED, str(exc), 0)
            return False
        self.figures.published[delivery.source.topic] += 1
        return True

    async def _give_up(
        self,
        delivery: Delivery,
        instances: list[LiveHandler],
        reason: str,
        error: str,
        retries: int,
        tried: Iterable[str] = (),
    ) -> None:
        group = delivery.group
        nodes = [*tried, *(i.node_id for i in instances)]
        topic = instances[0].handler.failed_topic_name if instances else failed_topic(group.topic)
        ident = event_id(delivery.event)
        events_log.warning(
            "event %s failed in group %s (%s after %d retries): %s; sent to %s",
            ident,
            group.group_id,
            reason,
            retries,
            error,
            topic,
            extra={
                "event_id": ident,
                "topic": delivery.source.topic,
                "group": group.group_id,
                "outcome": "failed",
                "reason": reason,
            },
        )
        await self.write_failed(topic, delivery.failed(reason, error, nodes, retries))
        if reason == Reason.RETRIES_EXHAUSTED and self._alerter is not None:
            self._alerter.failed(
                group.topic,
                group.group_id,
                [i.handler for i in instances],
                event_id(delivery.event),
                error,
            )

    async def write_failed(self, topic: str, record: FailedRecord) -> None:
        """Write to a failed topic: never drop the record, never wait on one it cannot take.

        A refusal that can pass (the broker away) is retried until the broker takes the record.
        A record refused for good (too large, say) is written cut instead: the beginning of
        its value, then none of it (a reference to its source), each time with the original's
        size and SHA-256. If even the reference is refused, the failed topic itself cannot be
        written (missing, not authorised): logistik says so and stops without committing the
        event, which is delivered again once the topic is fixed.
        """
        refused = await self._write_until_taken(topic, record)
        if refused is None:
            self.figures.failure(record.topic, record.reason, record.summary(topic))
            return
        fallbacks = [record.cut(0)]
        if refused.too_large and len(record.value or b"") > FAILED_VALUE_KEEP_BYTES:
            fallbacks.insert(0, record.cut(FAILED_VALUE_KEEP_BYTES))
        error: PublishError | None = refused
        for fallback in fallbacks:
            error = await self._write_until_taken(topic, fallback)
            if error is None:
                self.figures.failure(fallback.topic, fallback.reason, fallback.summary(topic))
                logger.warning(
                    "failed record of %s refused (%s): written with %d of its %d bytes (sha256 %s)",
                    record.source,
                    refused,
                    len(fallback.value or b""),
                    fallback.original_size,
                    fallback.sha256,
                )
                return
        assert error is not None
        await self._unwritable(topic, record, error)

    async def _write_until_taken(self, topic: str, record: FailedRecord) -> PublishError | None:
        """Write one record, retrying while the broker is away; the error if it refuses it."""
        retry = 0
        while True:
            try:
                await self._producer.send(topic, record.value, None, record.headers())
                return None
            except PublishError as exc:
                if exc.permanent:
                    return exc
                retry += 1
                delay_s = min(FAILED_WRITE_RETRY_CAP_S, 0.5 * 2 ** min(retry, 10))
                logger.error(
                    "%s; retrying in %.1f s (the partition waits, nothing is committed)",
                    exc,
                    delay_s,
                )
                await asyncio.sleep(delay_s)

    async def _unwritable(self, topic: str, record: FailedRecord, error: PublishError) -> None:
        """A failed record that cannot be written even as a reference: stop, commit nothing."""
        reason = (
            f"failed topic {topic} refuses even a reference to {record.source} ({error}); "
            "logistik stops without committing it"
        )
        logger.critical("%s", reason)
        if self._on_unwritable is None:
            raise error
        self._on_unwritable(reason)
        # The process is stopping: the event stays unfinished, so its offset is not committed.
        await asyncio.Event().wait()


def _settle(target: asyncio.Future[None], source: asyncio.Future[None]) -> None:
    """Give `target` the outcome of `source` (a cancelled write counts as refused)."""
    if target.done():
        _retrieved(source)
        return
    if source.cancelled():
        target.set_exception(PublishError("the write was cancelled"))
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(None)


def _abandon(writes: Iterable[Awaitable[None] | PublishError | None]) -> None:
    """Let the retry records of an event given up on settle unread."""
    for written in writes:
        if isinstance(written, asyncio.Future):
            written.add_done_callback(_retrieved)


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark a future's outcome as read, so that an error nobody awaits is not logged."""
    if not future.cancelled():
        future.exception()


def _all_open(pool: list[LiveHandler]) -> str:
    last = next((i.last_error for i in pool if i.last_error), "")
    nodes = ", ".join(i.node_id for i in pool)
    return f"circuit open for every instance ({nodes}); last error: {last or '-'}"


def _until_probe(pool: list[LiveHandler]) -> float:
    """Seconds until the first of the pool's open circuits lets a probe through."""
    return max(0.0, min(i.open_until for i in pool) - time.monotonic())


def _held_open(instance: LiveHandler, timeout_s: float) -> Answer:
    """No call: the instance's circuit opened while the call waited for a slot."""
    return Answer(
        Outcome.RETRY,
        None,
        error=_all_open([instance]),
        retry_after_s=instance.probe_in_s(time.monotonic(), timeout_s),
        held=True,
    )


def _held_back(instance: LiveHandler, seen_s: float) -> bool:
    """Whether a model that answered within IDLE_WINDOW_S before `seen_s` has free slots:
    with the in-flight budget full, its events wait on some other model's queue."""
    return instance.slots.free and seen_s - instance.slots.last_release_s <= IDLE_WINDOW_S


def _held_busy(instance: LiveHandler) -> Answer:
    """No call: more calls wait for the instance's slots than it answers soon."""
    # Taken back at once: off the main path, it waits for a slot in turn.
    return Answer(Outcome.RETRY, None, error=_busy(instance), retry_after_s=0.0, held=True)


def _busy(instance: LiveHandler) -> str:
    oldest_s = instance.slots.oldest_wait_s(time.monotonic())
    return (
        f"{instance.node_id} is busy: {instance.slots.waiting} call(s) waiting for its "
        f"{instance.max_concurrency} slots, the oldest for {oldest_s:.1f} s"
    )

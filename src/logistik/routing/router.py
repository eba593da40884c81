"""Routes one event to every group of its topic and acts on each answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from logistik.answer import Answer, Outcome
from logistik.config import RoutingConfig
from logistik.errors import InvalidEventError, PublishError
from logistik.event import Event, actor_key, decode_record, event_id
from logistik.handler import Handler
from logistik.kafka.clients import Headers
from logistik.observe.alerts import Alerter
from logistik.observe.figures import Figures
from logistik.observe.logs import EVENTS_LOGGER
from logistik.observe.statsd import Statsd
from logistik.observe.tracing import Tracing
from logistik.protocol import FailedRecord, Header, HeaderList, Reason, failed_topic, replay_marks
from logistik.routing.backoff import Backoff
from logistik.routing.cache import ResponseCache
from logistik.routing.decoy import DecoyTally, agrees
from logistik.routing.registry import Group, LiveHandler, Registry

logger = logging.getLogger(__name__)
events_log = logging.getLogger(EVENTS_LOGGER)

FAILED_WRITE_RETRY_CAP_S = 30.0


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


@dataclass(slots=True)
class Source:
    """Where a record came from, and for a replayed record the groups it is meant for."""

    topic: str
    partition: int
    offset: int
    replays: int = 0
    only_groups: frozenset[str] | None = None


@dataclass(slots=True)
class Delivery:
    """One event on its way to one group."""

    group: Group
    source: Source
    event: Event
    body: bytes

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
    ) -> None:
        self._registry = registry
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
        self.decoys = decoys or DecoyTally()
        self.figures = figures or Figures()

    async def handle(
        self, source: Source, raw: bytes | None, headers: HeaderList | None = None
    ) -> None:
        """Route one record; returns when every group is done with it."""
        if not self.tracing.enabled:
            await self._route(source, raw, headers)
            return
        with self.tracing.event(source.topic, source.partition, source.offset, headers):
            await self._route(source, raw, headers)

    async def _route(self, source: Source, raw: bytes | None, headers: HeaderList | None) -> None:
        self.figures.events_in[source.topic] += 1
        try:
            if headers:
                marks = replay_marks(headers)
                source.replays, source.only_groups = marks.replays, marks.only_groups
            event, body = decode_record(raw)
        except InvalidEventError as exc:
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
                replays=source.replays,
            )
            await self.write_failed(topic, record)
            return
        groups = self._registry.groups_for(source.topic, event)
        if source.only_groups is not None:
            groups = [g for g in groups if g.group_id in source.only_groups]
        if not groups:
            logger.debug("event %s of %s matches no group", event_id(event), source.topic)
            return
        if len(groups) == 1:
            await self._deliver(Delivery(groups[0], source, event, body))
        else:
            await asyncio.gather(*(self._deliver(Delivery(g, source, event, body)) for g in groups))

    async def _deliver(self, delivery: Delivery) -> None:
        """Get one answer from the group (decoys alongside); never raises."""
        try:
            if delivery.group.decoys and delivery.source.only_groups is None:
                await self._shadowed(delivery)  # a replay is for recovery, not for shadows
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
        """Answer as usual while every decoy gets the event too; compare, never publish."""
        decoys = delivery.group.decoys
        shadows = asyncio.gather(*(self._call(decoy, delivery.body) for decoy in decoys))
        try:
            answer = await self._answer(delivery)
        finally:
            decoy_answers = await shadows
        if answer is None:
            return
        for decoy, decoy_answer in zip(decoys, decoy_answers, strict=True):
            self.decoys.record(decoy.node_id, agrees(answer, decoy_answer))

    async def _answer(self, delivery: Delivery) -> Answer | None:
        """Get one answer from the group (or the cache); None when the event failed."""
        group = delivery.group
        if not group.answerable:
            if group.down:
                error = (
                    f"no instance of group {group.group_id} is up (down: {', '.join(group.down)})"
                )
                await self._give_up(delivery, [], Reason.NO_HANDLER, error, 0, group.down)
            return None
        pool = group.answering_pool(delivery.event)
        key = None
        if self._cache is not None:
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
        """Call the pool until an answer, retrying and failing over; None when it failed."""
        tried: list[str] = []
        retry = 0
        while True:
            instance = delivery.group.pick(pool, tried)
            assert instance is not None  # the pool of an answerable group is never empty
            answer = await self._call(instance, delivery.body, retry > 0)
            outcome = answer.outcome
            if outcome is Outcome.OK:
                if not await self._publish(delivery, instance, answer):
                    return None
                if key is not None and self._cache is not None:
                    self._cache.put(key, answer.body)
                self._done(delivery, instance, answer, f"published to {instance.handler.return_to}")
                return answer
            if outcome is Outcome.IGNORED or outcome is Outcome.DUPLICATE:
                self._done(delivery, instance, answer, outcome.value)
                return answer
            tried.append(instance.node_id)
            if outcome is Outcome.REJECTED:
                await self._give_up(delivery, [instance], Reason.REJECTED, answer.error, retry)
                return None
            if retry >= self._retries(instance):
                failed = [i for i in pool if i.node_id in tried]
                await self._give_up(
                    delivery, failed, Reason.RETRIES_EXHAUSTED, answer.error, retry, tried
                )
                return None
            retry += 1
            await asyncio.sleep(self._backoff.delay_s(retry, answer.retry_after_s))

    def _retries(self, instance: LiveHandler) -> int:
        retries = instance.handler.retries
        return retries if retries is not None else self._routing.retries

    async def _call(self, instance: LiveHandler, body: bytes, retry: bool = False) -> Answer:
        handler = instance.handler
        timeout_s = handler.timeout_s or self._routing.timeout_s
        # Counted before waiting for a slot so the load spread sees queued calls too.
        instance.in_flight += 1
        try:
            async with instance.slots:
                if self.tracing.enabled:
                    answer = await self._traced_call(instance, body, timeout_s, retry)
                else:
                    answer = await self._client.call(handler, body, timeout_s)
        finally:
            instance.in_flight -= 1
        self.figures.call(instance.node_id, answer, retry)
        if self._statsd is not None:
            self._statsd.call(handler.name, answer)
        if answer.outcome is Outcome.RETRY:
            instance.record_failure(
                self._routing.unhealthy_after_failures, self._routing.unhealthy_cooldown_s
            )
            self._keeps_failing(instance, answer)
        else:
            instance.record_success()
        return answer

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
            (Header.EVENT_ID, event_id(delivery.event).encode()),
            (Header.NODE_ID, handler.node_id.encode()),
            (Header.VERSION, handler.version.encode()),
            (Header.MODEL_TYPE, handler.model_type.value.encode()),
        ]
        if cached:
            headers.append((Header.CACHE, b"hit"))
        if self.tracing.enabled:
            headers.extend(self.tracing.kafka_headers())
        key = actor_key(delivery.event)
        try:
            await self._producer.send(handler.return_to, answer.body, key, headers)
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
        """Write to a failed topic, retrying until the broker takes it: never drop the record."""
        retry = 0
        while True:
            try:
                await self._producer.send(topic, record.value, None, record.headers())
                self.figures.failure(record.topic, record.reason, record.summary(topic))
                return
            except PublishError as exc:
                retry += 1
                delay_s = min(FAILED_WRITE_RETRY_CAP_S, 0.5 * 2 ** min(retry, 10))
                logger.error(
                    "%s; retrying in %.1f s (the partition waits, nothing is committed)",
                    exc,
                    delay_s,
                )
                await asyncio.sleep(delay_s)

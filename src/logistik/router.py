"""Routes one event to every group of its topic and acts on each answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from logistik.alert import Alerter
from logistik.backoff import Backoff
from logistik.config import RoutingConfig
from logistik.errors import InvalidEventError, PublishError
from logistik.event import Event, actor_key, decode_event, encode_event, event_id
from logistik.failure import FailedRecord, Reason
from logistik.kafka import EventProducer, Headers
from logistik.model_client import Answer, ModelClient, Outcome
from logistik.registry import Group, Instance, Registry

logger = logging.getLogger(__name__)

FAILED_WRITE_RETRY_CAP_S = 30.0


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from."""

    topic: str
    partition: int
    offset: int


class Router:
    """Sends events to models and publishes answers; failure is kept per (event, group)."""

    def __init__(
        self,
        registry: Registry,
        client: ModelClient,
        producer: EventProducer,
        routing: RoutingConfig,
        alerter: Alerter | None = None,
    ) -> None:
        self._registry = registry
        self._client = client
        self._producer = producer
        self._routing = routing
        self._alerter = alerter
        self._backoff = Backoff(
            routing.backoff_base_s, routing.backoff_cap_s, routing.retry_after_cap_s
        )

    async def handle(self, source: Source, raw: bytes | None) -> None:
        """Route one record; returns when every group is done with it."""
        try:
            event = decode_event(raw)
        except InvalidEventError as exc:
            logger.warning(
                "%s/%d/%d is not a valid event (%s): sent to %s-failed",
                source.topic,
                source.partition,
                source.offset,
                exc,
                source.topic,
            )
            await self.write_failed(
                f"{source.topic}-failed",
                FailedRecord(
                    source.topic, source.partition, source.offset, raw, exc.reason, str(exc)
                ),
            )
            return
        groups = self._registry.groups_for(source.topic, event)
        if not groups:
            logger.debug("event %s of %s matches no group", event_id(event), source.topic)
            return
        body = encode_event(event)
        if len(groups) == 1:
            await self._deliver(groups[0], source, event, body)
        else:
            await asyncio.gather(*(self._deliver(g, source, event, body) for g in groups))

    async def _deliver(self, group: Group, source: Source, event: Event, body: bytes) -> None:
        """Get one answer from the group, retrying and failing over; never raises."""
        try:
            await self._answer(group, source, event, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not stall the partition: record the event
            logger.exception(
                "internal error routing event %s to %s", event_id(event), group.group_id
            )
            await self.write_failed(
                f"{group.topic}-failed",
                FailedRecord(
                    source.topic,
                    source.partition,
                    source.offset,
                    body,
                    Reason.INTERNAL,
                    f"internal error: {exc!r}",
                    event_id(event),
                    group.group_id,
                ),
            )

    async def _answer(self, group: Group, source: Source, event: Event, body: bytes) -> None:
        pool = group.answering_pool(event)
        tried: list[str] = []
        retry = 0
        while True:
            instance = group.pick(pool, tried)
            if instance is None:
                await self._give_up(
                    group,
                    source,
                    event,
                    body,
                    [],
                    Reason.NO_HANDLER,
                    "the group has no instance that can answer",
                    retry,
                )
                return
            answer = await self._call(instance, body)
            handler = instance.handler
            outcome = answer.outcome
            logger.debug(
                "event %s -> %s: %s %s", event_id(event), instance.node_id, outcome, answer.error
            )
            if outcome is Outcome.OK:
                await self._publish(group, instance, source, event, body, answer)
                return
            if outcome is Outcome.IGNORED or outcome is Outcome.DUPLICATE:
                return
            tried.append(instance.node_id)
            if outcome is Outcome.REJECTED:
                await self._give_up(
                    group, source, event, body, [instance], Reason.REJECTED, answer.error, retry
                )
                return
            limit = handler.retries if handler.retries is not None else self._routing.retries
            if retry >= limit:
                instances = _unique(i for i in pool if i.node_id in tried)
                await self._give_up(
                    group,
                    source,
                    event,
                    body,
                    instances,
                    Reason.RETRIES_EXHAUSTED,
                    answer.error,
                    retry,
                    tried,
                )
                return
            retry += 1
            await asyncio.sleep(self._backoff.delay_s(retry, answer.retry_after_s))

    async def _call(self, instance: Instance, body: bytes) -> Answer:
        handler = instance.handler
        timeout_s = handler.timeout_s or self._routing.timeout_s
        # Counted before waiting for a slot so the load spread sees queued calls too.
        instance.in_flight += 1
        try:
            async with instance.slots:
                answer = await self._client.call(handler, body, timeout_s)
        finally:
            instance.in_flight -= 1
        if answer.outcome is Outcome.RETRY:
            instance.record_failure(
                self._routing.unhealthy_after_failures, self._routing.unhealthy_cooldown_s
            )
        else:
            instance.record_success()
        return answer

    async def _publish(
        self,
        group: Group,
        instance: Instance,
        source: Source,
        event: Event,
        body: bytes,
        answer: Answer,
    ) -> None:
        handler = instance.handler
        assert handler.return_to is not None
        headers: Headers = [
            ("logistik.event_id", event_id(event).encode()),
            ("logistik.node_id", handler.node_id.encode()),
            ("logistik.version", handler.version.encode()),
            ("logistik.model_type", handler.model_type.value.encode()),
        ]
        try:
            await self._producer.send(handler.return_to, answer.body, actor_key(event), headers)
        except PublishError as exc:
            await self._give_up(
                group, source, event, body, [instance], Reason.PUBLISH_FAILED, str(exc), 0
            )

    async def _give_up(
        self,
        group: Group,
        source: Source,
        event: Event,
        body: bytes,
        instances: list[Instance],
        reason: str,
        error: str,
        retries: int,
        tried: Iterable[str] = (),
    ) -> None:
        nodes = tuple(dict.fromkeys([*tried, *(i.node_id for i in instances)]))
        topic = instances[0].handler.failed_topic_name if instances else f"{group.topic}-failed"
        logger.warning(
            "event %s failed in group %s (%s after %d retries): %s; sent to %s",
            event_id(event),
            group.group_id,
            reason,
            retries,
            error,
            topic,
        )
        await self.write_failed(
            topic,
            FailedRecord(
                source.topic,
                source.partition,
                source.offset,
                body,
                reason,
                error,
                event_id(event),
                group.group_id,
                nodes,
                retries,
            ),
        )
        if reason == Reason.RETRIES_EXHAUSTED and self._alerter is not None:
            self._alerter.retries_exhausted(
                group.group_id, group.topic, [i.handler for i in instances], event_id(event), error
            )

    async def write_failed(self, topic: str, record: FailedRecord) -> None:
        """Write to a failed topic, retrying until the broker takes it: never drop the record."""
        retry = 0
        while True:
            try:
                await self._producer.send(topic, record.value, None, record.headers())
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


def _unique(instances: Iterable[Instance]) -> list[Instance]:
    return list({i.node_id: i for i in instances}.values())

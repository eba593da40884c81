"""Keeps the router's registry in line with the handler store while logistik runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from logistik.config import KafkaConfig
from logistik.control.store import Store
from logistik.errors import describe
from logistik.handler import Handler
from logistik.kafka import ensure_topics
from logistik.protocol import failed_topic, retry_topic
from logistik.routing.backoff import Backoff
from logistik.routing.decoy import DecoyTally
from logistik.routing.registry import Registry

logger = logging.getLogger(__name__)

RETRY_CAP_S = 15.0  # the longest wait between reloads while the store fails


def topics_of(handlers: list[Handler]) -> set[str]:
    """Every topic handlers read or write: their event, retry, return and failed topics."""
    topics: set[str] = set()
    for handler in handlers:
        topics |= {
            handler.event,
            retry_topic(handler.event, handler.group_id),
            handler.failed_topic_name,
            failed_topic(handler.event),
        }
        if handler.return_to:
            topics.add(handler.return_to)
    return topics


class StoreFollower:
    """Reloads handlers from the store into the registry, creating the topics new ones need."""

    def __init__(
        self, store: Store, registry: Registry, kafka: KafkaConfig, tally: DecoyTally | None = None
    ) -> None:
        self._store = store
        self._registry = registry
        self._kafka = kafka
        self.tally = tally
        self._seen: tuple[dict[str, Handler], dict[str, Handler]] = ({}, {})
        self._topics: set[str] = set()
        self.error: str | None = None  # why the last refresh failed, None when it worked
        self.failures = 0  # refreshes failed in a row

    async def refresh(self) -> bool:
        """Load the store once; returns whether the routed handlers changed."""
        if self.tally is not None:
            await self._store.count_decoy(self.tally.drain())
        records = await self._store.records()
        # Only routable handlers, even when down: a handler without a topic never reaches the
        # subscription (state says "invalid" for it whatever its health).
        active = {r.node_id: r.handler for r in records if r.state == "active"}
        down = {r.node_id: r.handler for r in records if r.state == "down"}
        if (active, down) == self._seen:
            return False
        await self._ensure_topics(list(active.values()))
        _log_changes(self._seen[0], active, down)
        self._registry.replace(active.values(), down.values())
        self._seen = (active, down)
        return True

    async def follow(self, stop: asyncio.Event, refresh_s: float) -> None:
        """Refresh every `refresh_s` until stopped; a failing store keeps the last handlers.

        Never ends before `stop`: whatever a refresh raises (a driver's own errors after a
        database outage included) is reported once, and refreshes go on with back-off.
        """
        backoff = Backoff(base_s=refresh_s, cap_s=max(refresh_s, RETRY_CAP_S))
        while not stop.is_set():
            wait_s = backoff.delay_s(self.failures) if self.failures else refresh_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)
            if stop.is_set():
                return
            await self._refresh_reporting()

    async def _refresh_reporting(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # a driver's own errors too: the follower must never end
            if self.error is None:
                logger.error(
                    "cannot reload handlers (%s); routing with the last known, retrying",
                    describe(exc),
                )
            self.error = describe(exc)
            self.failures += 1
            return
        if self.error is not None:
            logger.info("handler store reachable again after %d failed reload(s)", self.failures)
        self.error, self.failures = None, 0

    async def final_refresh(self) -> None:
        """One last refresh at exit (it writes the decoy counts); a failure is only logged."""
        await self._refresh_reporting()

    async def _ensure_topics(self, handlers: list[Handler]) -> None:
        wanted = topics_of(handlers) - self._topics
        if not wanted or not self._kafka.create_topics:
            return
        created = await asyncio.to_thread(ensure_topics, self._kafka, wanted)
        for topic in created:
            logger.info("created topic %s (%d partitions)", topic, self._kafka.partitions)
        self._topics |= wanted


def _log_changes(
    before: dict[str, Handler], active: dict[str, Handler], down: dict[str, Handler]
) -> None:
    for node_id in sorted(active.keys() - before.keys()):
        handler = active[node_id]
        logger.info(
            "routing %s to %s (type %s, %s, group %s)",
            handler.event,
            node_id,
            handler.model_type.value,
            f"version {handler.version}" if handler.version else "no version",
            handler.group_id,
        )
    for node_id in sorted(before.keys() - active.keys()):
        why = "down" if node_id in down else "removed"
        logger.info("no longer routing to %s (%s)", node_id, why)
    for node_id in sorted(before.keys() & active.keys()):
        if before[node_id] != active[node_id]:
            was, now = before[node_id].model_type, active[node_id].model_type
            # The node id keeps the type the handler was registered with: say the one it has.
            change = f" (now {now.value}, was {was.value})" if was != now else f" ({now.value})"
            logger.info("handler %s changed%s", node_id, change)

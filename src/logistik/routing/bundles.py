"""Held events bound for a retry topic, gathered into bundles: one record for many events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from logistik.errors import PublishError
from logistik.protocol import MAX_BUNDLE_BYTES, MAX_BUNDLE_EVENTS

logger = logging.getLogger(__name__)

# An event larger than this goes on its own: a bundle is for the many small ones.
MAX_BUNDLED_EVENT_BYTES = MAX_BUNDLE_BYTES // 4


@dataclass(eq=False, slots=True)
class Bundle:
    """Held events of one partition for one group's retry topic, written as one record."""

    retry_topic: str
    group_id: str
    topic: str
    partition: int
    nodes: tuple[str, ...]  # the instances found busy: the retry prefers others
    error: str  # why the first event was held: every event of the bundle waits for the same
    since_ms: int
    written: asyncio.Future[None]  # the record's acknowledgement, or why it was refused
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    size: int = 0


class RetryBundles:
    """Gathers held events per (retry topic, partition) and hands each bundle to `write`.

    A bundle is written when it is full, or once the event loop has run what was ready when
    its first event came: the events of one poll are routed in one turn, so they share one
    record without waiting any longer.
    """

    def __init__(self, write: Callable[[Bundle], None]) -> None:
        self._write = write
        # By retry topic, group and partition (two groups' retry topics can share a name once
        # cut to Kafka's limit), and the instances found busy.
        self._open: dict[tuple[str, str, int, tuple[str, ...]], Bundle] = {}
        self._flush_due = False

    def add(
        self,
        retry_topic: str,
        group_id: str,
        topic: str,
        partition: int,
        offset: int,
        body: bytes,
        error: str,
        nodes: tuple[str, ...] = (),
    ) -> asyncio.Future[None] | None:
        """Add a held event; the future of its bundle's record, or None if it goes alone."""
        if len(body) > MAX_BUNDLED_EVENT_BYTES:
            return None
        key = (retry_topic, group_id, partition, nodes)
        bundle = self._open.get(key)
        if bundle is not None and (
            bundle.topic != topic or bundle.size + len(body) > MAX_BUNDLE_BYTES
        ):
            self._flush(key)
            bundle = None
        if bundle is None:
            loop = asyncio.get_running_loop()
            written: asyncio.Future[None] = loop.create_future()
            now_ms = int(time.time() * 1000)
            bundle = Bundle(retry_topic, group_id, topic, partition, nodes, error, now_ms, written)
            self._open[key] = bundle
            if not self._flush_due:
                self._flush_due = True
                loop.call_soon(self.flush)
        bundle.entries.append((offset, body))
        bundle.size += len(body)
        if len(bundle.entries) >= MAX_BUNDLE_EVENTS:
            self._flush(key)
        return bundle.written

    def flush(self) -> None:
        """Write every open bundle."""
        self._flush_due = False
        for key in list(self._open):
            self._flush(key)

    def _flush(self, key: tuple[str, str, int, tuple[str, ...]]) -> None:
        """Write one bundle; never raises, so that the bundles after it are written too."""
        bundle = self._open.pop(key)
        try:
            self._write(bundle)
        except PublishError as exc:  # each event then goes alone, which says what failed
            _refuse(bundle.written, exc)
        except Exception as exc:
            logger.exception("writing a retry bundle failed: its events go one by one")
            _refuse(bundle.written, PublishError(f"a bundle was not written: {exc!r}"))


def _refuse(written: asyncio.Future[None], error: PublishError) -> None:
    if not written.done():
        written.set_exception(error)

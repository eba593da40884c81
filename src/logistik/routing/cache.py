"""Optional response cache in Redis: a hit publishes the stored answer without calling the model.

Only 200 answers are stored. The key is the model (group and version) plus what identifies the
request: verb, provider, actor and object (its url, else its id). Redis being away never fails
an event: the cache is skipped, and left alone for a while after an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING

import orjson

from logistik.config import CacheConfig, require_extra
from logistik.event import Event
from logistik.handler import Handler

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)


def _ident(value: object, *fields: str) -> str:
    if isinstance(value, dict):
        for name in fields:
            found = value.get(name)
            if found not in (None, ""):
                return str(found)
        return ""
    return "" if value is None else str(value)


def cache_key(prefix: str, handler: Handler, event: Event) -> str:
    """The key of an event's answer by a model."""
    parts = [
        str(event.get("verb", "")),
        _ident(event.get("provider"), "id", "url"),
        _ident(event.get("actor"), "id", "url"),
        _ident(event.get("object"), "url", "id"),
    ]
    digest = hashlib.sha256(orjson.dumps(parts)).hexdigest()[:32]
    return f"{prefix}{handler.event}:{handler.group_id}:{handler.version}:{digest}"


class ResponseCache:
    """Redis-backed answers with a TTL; every failure means "no cache", never an error."""

    def __init__(self, config: CacheConfig) -> None:
        self._config = config
        redis = require_extra("redis.asyncio", "cache", "cache")
        self._redis: Redis = redis.Redis.from_url(
            config.url, socket_timeout=config.timeout_s, socket_connect_timeout=config.timeout_s
        )
        # Every failure of Redis means "no cache": its own errors and the OS's.
        self._failures: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._resting_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0

    def key(self, handler: Handler, event: Event) -> str:
        """The key of an event's answer by this handler's model."""
        return cache_key(self._config.prefix, handler, event)

    async def get(self, key: str) -> bytes | None:
        """A stored answer, or None (also when Redis is away)."""
        if time.monotonic() < self._resting_until:
            return None
        try:
            value = await self._redis.get(key)
        except self._failures as exc:
            self._rest(exc)
            return None
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return value if isinstance(value, bytes) else value.encode()

    def put(self, key: str, answer: bytes) -> None:
        """Store an answer in the background; the event does not wait for Redis."""
        if time.monotonic() < self._resting_until:
            return
        task = asyncio.create_task(self._put(key, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, key: str, answer: bytes) -> None:
        try:
            await self._redis.set(key, answer, ex=self._config.ttl_s)
        except self._failures as exc:
            self._rest(exc)

    def _rest(self, exc: BaseException) -> None:
        if time.monotonic() >= self._resting_until:
            logger.warning(
                "response cache unavailable (%s); events go to the models for %g s",
                exc,
                self._config.retry_after_s,
            )
        self._resting_until = time.monotonic() + self._config.retry_after_s

    async def close(self) -> None:
        """Finish pending writes and close the connections."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()

"""A model's own uWSGI figures, read from its stats server at its port + 100 (`--stats-http`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
import orjson

from logistik.handler import Handler
from logistik.routing.model_client import read_at_most

STATS_PORT_OFFSET = 100
TIMEOUT_S = 0.5
CACHE_S = 3.0
MAX_BYTES = 4_000_000  # a stats document of many workers and cores stays far below

Address = tuple[str, int]


def stats_address(handler: Handler) -> Address | None:
    """Where a handler's uWSGI stats server would listen, None when the port cannot be one."""
    port = handler.port + STATS_PORT_OFFSET
    return (handler.endpoint, port) if port <= 65535 else None


def summarise(stats: Any, now: float) -> dict[str, Any] | None:
    """Requests, exceptions, uptime, status and load of a stats document; None if not one."""
    workers = stats.get("workers") if isinstance(stats, dict) else None
    if not isinstance(workers, list) or not all(isinstance(w, dict) for w in workers):
        return None
    try:
        requests = sum(int(w.get("requests") or 0) for w in workers)
        exceptions = sum(int(w.get("exceptions") or 0) for w in workers)
        spawns = [float(w["last_spawn"]) for w in workers if w.get("last_spawn")]
    except (TypeError, ValueError):
        return None
    statuses = [str(w.get("status", "")) for w in workers]
    status = next((s for s in ("busy", "idle") if s in statuses), statuses[0] if statuses else "")
    return {
        "requests": requests,
        "exceptions": exceptions,
        "uptime_s": max(0.0, now - min(spawns)) if spawns else None,
        "status": status or None,
        "load": stats.get("load"),
    }


async def fetch_stats(address: Address, timeout_s: float = TIMEOUT_S) -> dict[str, Any] | None:
    """The summarised stats of one uWSGI stats server, None when it does not answer with them."""
    host, port = address
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            body = await read_at_most(response, MAX_BYTES)
            if response.status != 200 or body is None:
                return None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None
    try:
        return summarise(orjson.loads(body), time.time())
    except orjson.JSONDecodeError:
        return None


class UwsgiStats:
    """uWSGI stats of many handlers, fetched concurrently and kept a few seconds."""

    def __init__(self, timeout_s: float = TIMEOUT_S, cache_s: float = CACHE_S) -> None:
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._cache: dict[Address, tuple[float, dict[str, Any] | None]] = {}
        self._pending: dict[Address, asyncio.Task[dict[str, Any] | None]] = {}

    async def for_handlers(self, handlers: Iterable[Handler]) -> dict[str, dict[str, Any] | None]:
        """Each handler's summarised stats by node id (None: no stats server answered)."""
        wanted = {h.node_id: stats_address(h) for h in handlers}
        addresses = {a for a in wanted.values() if a is not None}
        found = dict(zip(addresses, await asyncio.gather(*map(self.get, addresses)), strict=True))
        return {node_id: None if a is None else found[a] for node_id, a in wanted.items()}

    async def get(self, address: Address) -> dict[str, Any] | None:
        """One address's stats: cached when fresh, else fetched once however many ask."""
        now = time.monotonic()
        cached = self._cache.get(address)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        task = self._pending.get(address)
        if task is None:
            task = asyncio.create_task(fetch_stats(address, self.timeout_s))
            self._pending[address] = task
            task.add_done_callback(lambda done: self._store(address, done))
        return await asyncio.shield(task)

    def _store(self, address: Address, task: asyncio.Task[dict[str, Any] | None]) -> None:
        """Keep a finished fetch's result, and forget results nobody asked for in a while."""
        self._pending.pop(address, None)
        now = time.monotonic()
        stale = [a for a, (at, _) in self._cache.items() if now - at > 10 * self.cache_s]
        for old in stale:
            del self._cache[old]
        if not task.cancelled():
            self._cache[address] = (now, None if task.exception() else task.result())

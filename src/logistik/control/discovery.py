"""Consul discovery: watches services tagged for logistik and writes their instances to the store.

Every service carrying the configured tag (default `logistik`) is watched with blocking
queries on /v1/health/service/<name>; /v1/catalog/services (also blocking) tells which
services exist. Instances whose checks all pass are enabled; critical ones are kept but get no
events; deregistered ones are marked gone. Settings the tags leave out come from the model's
`GET /info[/<environment>]`; a new instance of a known service inherits its event, path and
method. Admin state in the store is never overwritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import ValidationError

from logistik.config import ConsulConfig
from logistik.control.consul import ConsulClient, ConsulError, Indexed, next_index
from logistik.control.store import Store
from logistik.handler import Handler

logger = logging.getLogger(__name__)

SOURCE = "consul"
TAG_FIELDS = {
    "model": "model_type",
    "node": "node",
    "hostname": "hostname",
    "version": "version",
    "event": "event",
    "path": "path",
    "returnto": "return_to",
    "group_id": "group_id",
    "environment": "environment",
}
INFO_FIELDS = (
    "event",
    "path",
    "method",
    "return_to",
    "failed_topic",
    "group_id",
    "retries",
    "timeout",
)
INHERITED_FIELDS = ("event", "path", "method")
BLOCK_WAIT_S = 60.0
BACKOFF_CAP_S = 30.0


@dataclass
class ConsulInstance:
    """One Consul service instance as discovery sees it."""

    service: str
    consul_id: str
    address: str
    port: int
    tags: dict[str, str]
    passing: bool
    failing_checks: list[str] = field(default_factory=list)


def parse_tags(tags: list[str]) -> dict[str, str]:
    """`key=value` tags as a mapping (plain tags are kept with an empty value)."""
    parsed: dict[str, str] = {}
    for tag in tags:
        key, _, value = tag.partition("=")
        parsed[key.strip()] = value.strip()
    return parsed


def instance_of(entry: Mapping[str, Any]) -> ConsulInstance:
    """An entry of /v1/health/service/<name> as an ConsulInstance."""
    service, node = entry.get("Service") or {}, entry.get("Node") or {}
    checks = entry.get("Checks") or []
    failing = [
        f"{c.get('Name') or c.get('CheckID')}: {c.get('Status')}"
        for c in checks
        if c.get("Status") != "passing"
    ]
    return ConsulInstance(
        service=str(service.get("Service", "")),
        consul_id=str(service.get("ID", "")),
        address=str(service.get("Address") or node.get("Address") or ""),
        port=int(service.get("Port") or 0),
        tags=parse_tags(list(service.get("Tags") or [])),
        passing=not failing,
        failing_checks=failing,
    )


class InfoCache:
    """Answers of models' /info, fetched once per instance (again after a failure)."""

    def __init__(self, session: aiohttp.ClientSession, timeout_s: float = 5.0) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._answers: dict[str, dict[str, Any]] = {}

    async def get(self, instance: ConsulInstance) -> dict[str, Any]:
        """The instance's /info fields; raises ConsulError-free LookupError text on failure."""
        if instance.consul_id in self._answers:
            return self._answers[instance.consul_id]
        environment = instance.tags.get("environment", "")
        url = f"http://{instance.address}:{instance.port}/info" + (
            f"/{environment}" if environment else ""
        )
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                if response.status != 200:
                    raise LookupError(f"GET {url} answered HTTP {response.status}")
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LookupError(f"GET {url} failed: {exc or type(exc).__name__}") from None
        if not isinstance(answer, dict):
            raise LookupError(f"GET {url} did not answer a JSON object")
        fields = {k: answer[k] for k in INFO_FIELDS if answer.get(k) not in (None, "")}
        self._answers[instance.consul_id] = fields
        return fields

    def forget(self, keep: set[str]) -> None:
        """Drop answers of instances that are gone."""
        for consul_id in set(self._answers) - keep:
            del self._answers[consul_id]


class ConsulDiscovery:
    """Keeps the store's `consul` handlers in line with Consul; survives Consul going away."""

    def __init__(
        self,
        config: ConsulConfig,
        store: Store,
        session: aiohttp.ClientSession,
        wait_s: float = BLOCK_WAIT_S,
    ) -> None:
        self._config = config
        self._store = store
        self._info = InfoCache(session)
        self._wait_s = wait_s
        self._services: dict[str, list[ConsulInstance]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self.error: str | None = None  # the last Consul error while it is failing

    async def run(self, stop: asyncio.Event) -> None:
        """Watch Consul and sync the store until stopped."""
        async with ConsulClient(self._config.url) as client:
            syncer = asyncio.create_task(self._sync_forever(stop), name="consul-sync")
            try:
                await _until(stop, self._watch_catalog(client))
            finally:
                for task in [*self._watchers.values(), syncer]:
                    task.cancel()
                await asyncio.gather(*self._watchers.values(), syncer, return_exceptions=True)

    async def _watch_catalog(self, client: ConsulClient) -> None:
        index = 0
        async for answer in self._blocking(
            lambda i: client.catalog_services(index=i, wait_s=self._wait_s), "the catalog"
        ):
            index = next_index(index, answer.index)
            names = {n for n, tags in answer.value.items() if self._config.tag in tags}
            for name in names - self._watchers.keys():
                self._watchers[name] = asyncio.create_task(self._watch_service(client, name))
            for name in set(self._watchers) - names:
                self._watchers.pop(name).cancel()
                self._services.pop(name, None)
                self._changed.set()

    async def _watch_service(self, client: ConsulClient, name: str) -> None:
        async for answer in self._blocking(
            lambda i: client.health_service(name, passing=False, index=i, wait_s=self._wait_s),
            f"service {name}",
        ):
            instances = [instance_of(e) for e in answer.value]
            self._services[name] = [i for i in instances if self._config.tag in i.tags]
            self._changed.set()

    async def _blocking(self, query: Any, what: str) -> Any:
        """Yield each answer of a blocking query, retrying with back-off while Consul fails."""
        index, failures = 0, 0
        while True:
            try:
                answer: Indexed[Any] = await query(index)
            except ConsulError as exc:
                failures += 1
                index = 0  # ask without blocking next time: a recovery shows at once
                self._failing(exc, what, failures)
                await asyncio.sleep(min(BACKOFF_CAP_S, 0.5 * 2 ** min(failures, 8)))
                continue
            if failures:
                self._recovered(what)
            failures = 0
            index = next_index(index, answer.index)
            yield answer

    def _failing(self, exc: ConsulError, what: str, failures: int) -> None:
        self.error = str(exc)
        if failures == 1:
            logger.error(
                "discovery: %s (watching %s); routing with the last known handlers, retrying",
                exc,
                what,
            )

    def _recovered(self, what: str) -> None:
        self.error = None
        logger.info("discovery: Consul answers again (watching %s)", what)

    async def _sync_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._changed.wait()
            self._changed.clear()
            try:
                await self.sync_once()
            except Exception:  # the store may be away; the next change or retry syncs again
                logger.exception("discovery: cannot write handlers to the store")
                await asyncio.sleep(1.0)
                self._changed.set()

    async def sync_once(self) -> None:
        """Write what Consul lists now to the store."""
        handlers, problems = await self.handlers()
        changed = await self._store.sync(handlers, SOURCE, problems)
        if changed:
            logger.info("discovery: %d handler change(s) from Consul", changed)
        self._info.forget({i.consul_id for group in self._services.values() for i in group})

    async def handlers(self) -> tuple[list[Handler], dict[str, str]]:
        """Handlers for every watched instance, and what is wrong with some of them."""
        handlers: list[Handler] = []
        problems: dict[str, str] = {}
        for name, instances in sorted(self._services.items()):
            known: dict[str, Any] = {}
            for instance in sorted(instances, key=lambda i: i.consul_id):
                handler, problem = await self._handler(name, instance, known)
                if handler is None:
                    logger.warning("discovery: ignoring %s (%s)", instance.consul_id, problem)
                    continue
                handlers.append(handler)
                if problem:
                    problems[handler.node_id] = problem
                known.update(
                    {
                        k: getattr(handler, k)
                        for k in INHERITED_FIELDS
                        if k not in known and handler.problem() is None
                    }
                )
        return handlers, problems

    async def _handler(
        self,
        name: str,
        instance: ConsulInstance,
        inherited: dict[str, Any],
    ) -> tuple[Handler | None, str | None]:
        fields: dict[str, Any] = {
            TAG_FIELDS[k]: v for k, v in instance.tags.items() if k in TAG_FIELDS and v
        }
        problems: list[str] = []
        if "hostname" not in fields:
            problems.append("no hostname= tag")
        if "event" not in fields or "return_to" not in fields:
            try:
                fields = {**await self._info.get(instance), **fields}
            except LookupError as exc:
                problems.append(str(exc))
        for key in INHERITED_FIELDS:
            fields.setdefault(key, inherited.get(key))
        if not instance.passing:
            problems.append("checks not passing: " + "; ".join(instance.failing_checks))
        values = {
            **{k: v for k, v in fields.items() if v is not None},
            "name": name,
            "service_id": name,
            "endpoint": instance.address,
            "port": instance.port,
            "consul_service_id": instance.consul_id,
            "tags": sorted(instance.tags),
            "enabled": instance.passing and not problems,
        }
        values.setdefault("event", "")
        try:
            handler = Handler.model_validate(values)
        except ValidationError as exc:
            return None, "; ".join(str(e["msg"]) for e in exc.errors())
        missing = handler.problem()
        if missing:
            problems.append(missing)
        return handler, "; ".join(problems) or None


async def _until(stop: asyncio.Event, work: Any) -> None:
    """Run a coroutine until it ends or `stop` is set."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopper):
            pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

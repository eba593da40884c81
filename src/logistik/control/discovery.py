"""Consul discovery: watches services tagged for logistik and writes their instances to the store.

Every service carrying the configured tag (default `logistik`) is watched with blocking
queries on /v1/health/service/<name>; /v1/catalog/services (also blocking) tells which
services exist. Instances whose checks all pass are enabled; critical ones are kept but get no
events; deregistered ones are marked gone. Each instance's `GET /info[/<environment>]` fills
what its tags leave out (tags win); a new instance of a known service inherits its event, path
and method. Admin state in the store is never overwritten.

Nothing Consul or a model answers can stop discovery: each entry is checked on its own (a bad
one is skipped with one log line naming the service and the field), every watch retries with
back-off whatever goes wrong, and a watch ends only when discovery is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError

from logistik.config import ConsulConfig, field_problems
from logistik.control.consul import ConsulClient, ConsulError, Indexed, next_index
from logistik.control.store import Store
from logistik.errors import DiscoveryError, describe, one_line
from logistik.handler import TAGS_MAX, TEXT_MAX, Handler, is_host
from logistik.routing.backoff import Backoff

logger = logging.getLogger(__name__)

T = TypeVar("T")
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
    "batch_max_size": "batch_max_size",
    "batch_max_wait_ms": "batch_max_wait_ms",
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
    "batch_max_size",
    "batch_max_wait_ms",
)
INHERITED_FIELDS = ("event", "path", "method")
# Without these an instance cannot be stored at all; any other bad field is left out instead.
IDENTITY_FIELDS = frozenset(
    {"name", "service_id", "hostname", "node", "model_type", "node_id", "endpoint", "port"}
)
BLOCK_WAIT_S = 60.0
MIN_QUERY_INTERVAL_S = 0.1  # Consul asks clients to rate-limit their blocking loops
RETRY = Backoff(base_s=0.5, cap_s=30.0)  # a watch, or writing to the store, that failed
TAG_MAX = 1024  # characters of one Consul tag
INFO_TIMEOUT_S = 3.0
INFO_MAX_BYTES = 64 * 1024
INFO_RETRY = Backoff(base_s=1.0, cap_s=60.0)
INFO_CONCURRENCY = 32


class BadEntryError(DiscoveryError):
    """An entry of a Consul answer discovery cannot take; the message names the field."""

    def __init__(self, message: str, consul_id: str = "") -> None:
        super().__init__(message)
        self.consul_id = consul_id


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

    @property
    def info_url(self) -> str:
        """Where the model answers its settings: /info, or /info/<environment>."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        environment = self.tags.get("environment", "")
        suffix = f"/{quote(environment, safe='')}" if environment else ""
        return f"http://{host}:{self.port}/info{suffix}"


def parse_tags(tags: list[str]) -> dict[str, str]:
    """`key=value` tags as a mapping (plain tags are kept with an empty value)."""
    parsed: dict[str, str] = {}
    for tag in tags:
        key, _, value = tag.partition("=")
        parsed[key.strip()] = value.strip()
    return parsed


def _shown(value: Any) -> str:
    """A value from Consul as a message may show it: short, on one line."""
    return one_line(repr(value), 60)


def instance_of(service_name: str, entry: Any) -> ConsulInstance:
    """An entry of /v1/health/service/<name>, checked field by field; BadEntryError if wrong."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("Service"), Mapping):
        raise BadEntryError(f"not an entry with a Service object (got {_shown(entry)})")
    service, node = entry["Service"], entry.get("Node")
    node = node if isinstance(node, Mapping) else {}
    consul_id = service.get("ID")
    if not isinstance(consul_id, str) or not 0 < len(consul_id) <= TEXT_MAX:
        raise BadEntryError(f"ID: not a service id of 1 to {TEXT_MAX} characters")
    address = service.get("Address") or node.get("Address") or ""
    if not isinstance(address, str) or not is_host(address.removeprefix("[").removesuffix("]")):
        raise BadEntryError(
            f"Address: not a host name or IP address ({_shown(address)})", consul_id
        )
    port = service.get("Port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise BadEntryError(f"Port: not a port number ({_shown(port)})", consul_id)
    tags = service.get("Tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise BadEntryError(f"Tags: not a list of strings ({_shown(tags)})", consul_id)
    if len(tags) > TAGS_MAX or any(len(tag) > TAG_MAX for tag in tags):
        raise BadEntryError(
            f"Tags: more than {TAGS_MAX} tags, or one longer than {TAG_MAX} characters", consul_id
        )
    checks = entry.get("Checks") or []
    if not isinstance(checks, list) or not all(isinstance(c, Mapping) for c in checks):
        raise BadEntryError(f"Checks: not a list of checks ({_shown(checks)})", consul_id)
    failing = [
        one_line(f"{c.get('Name') or c.get('CheckID')}: {c.get('Status')}", 120)
        for c in checks
        if c.get("Status") != "passing"
    ]
    return ConsulInstance(
        service=service_name,
        consul_id=consul_id,
        address=address,
        port=port,
        tags=parse_tags(tags),
        passing=not failing,
        failing_checks=failing,
    )


@dataclass
class Info:
    """What a model's /info said: its fields, or why they are not known (yet)."""

    fields: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # why /info gave nothing: shown when the handler lacks a field


class InfoCache:
    """Models' /info answers: asked once per instance, concurrently and with a short timeout.

    An instance whose /info cannot be read yet (the model is still starting) is asked again in
    the background with back-off, so it never slows a sync down; `on_change` is called when a
    retry succeeds. A 404 is an answer: that model serves no /info.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        on_change: Callable[[], None],
        timeout_s: float = INFO_TIMEOUT_S,
        max_bytes: int = INFO_MAX_BYTES,
    ) -> None:
        self._session = session
        self._on_change = on_change
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self._known: dict[str, Info] = {}
        self._retries: dict[str, asyncio.Task[None]] = {}
        self._gate = asyncio.Semaphore(INFO_CONCURRENCY)

    async def refresh(self, instances: list[ConsulInstance]) -> None:
        """Ask /info of the instances never asked, all at once."""
        new = {i.info_url: i for i in instances if i.info_url not in self._known}
        answers = await asyncio.gather(*(self._ask(url) for url in new))
        for url, (info, failed) in zip(new, answers, strict=True):
            self._known[url] = info
            if failed:
                self._retries[url] = asyncio.create_task(self._retry(url), name=f"/info {url}")

    def get(self, instance: ConsulInstance) -> Info:
        """What the instance's /info said (nothing, before `refresh`)."""
        return self._known.get(instance.info_url) or Info()

    def forget(self, keep: set[str]) -> None:
        """Drop what is known of instances that are gone (by their /info URL)."""
        for url in set(self._known) - keep:
            del self._known[url]
            retry = self._retries.pop(url, None)
            if retry is not None:
                retry.cancel()

    async def close(self) -> None:
        """Stop the retries."""
        for retry in self._retries.values():
            retry.cancel()
        await asyncio.gather(*self._retries.values(), return_exceptions=True)
        self._retries.clear()

    async def _retry(self, url: str) -> None:
        attempt = 0
        while True:
            attempt += 1
            await asyncio.sleep(INFO_RETRY.delay_s(attempt))
            info, failed = await self._ask(url)
            if url not in self._known:
                return
            changed = info != self._known[url]
            self._known[url] = info
            if changed and not failed:
                self._on_change()
            if not failed:
                self._retries.pop(url, None)
                return

    async def _ask(self, url: str) -> tuple[Info, bool]:
        """The Info of one /info URL, and whether asking failed (and is worth a retry)."""
        try:
            async with self._gate:
                answer = await self._fetch(url)
        except LookupError as exc:
            return Info(note=str(exc)), True
        except Exception as exc:  # whatever else a model's answer breaks: a failure, retried
            logger.debug("discovery: GET %s failed", url, exc_info=exc)
            return Info(note=f"GET {url} failed: {type(exc).__name__}: {describe(exc, 120)}"), True
        if answer is None:
            return Info(note=f"GET {url} answered HTTP 404"), False
        fields = {k: answer[k] for k in INFO_FIELDS if answer.get(k) not in (None, "")}
        return Info(fields), False

    async def _fetch(self, url: str) -> dict[str, Any] | None:
        try:
            async with self._session.get(
                url, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status == 404:
                    return None
                if response.status != 200:
                    raise LookupError(f"GET {url} answered HTTP {response.status}")
                body = await response.content.read(self._max_bytes + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else describe(exc, 120)
            raise LookupError(f"GET {url} failed: {reason}") from None
        if len(body) > self._max_bytes:
            raise LookupError(f"GET {url} answered more than {self._max_bytes // 1024} KiB")
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            raise LookupError(f"GET {url} did not answer JSON") from None
        if not isinstance(answer, dict):
            raise LookupError(f"GET {url} did not answer a JSON object")
        return answer


def validated(values: dict[str, Any]) -> tuple[Handler | None, list[str]]:
    """A handler of the values with every bad non-identity field left out, and what was left out.

    None when an identity or address field is bad: such an instance cannot be stored at all.
    """
    try:
        return Handler.model_validate(values), []
    except ValidationError as exc:
        bad = {str(e["loc"][0]) if e["loc"] else "" for e in exc.errors()}
        problems = field_problems(exc)
    if bad & IDENTITY_FIELDS or "" in bad:
        return None, problems
    rest = {k: v for k, v in values.items() if k not in bad}
    try:
        return Handler.model_validate(rest), problems
    except ValidationError as again:
        return None, field_problems(again)


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
        self._changed = asyncio.Event()
        self._info = InfoCache(session, self._changed.set)
        self._wait_s = wait_s
        self._services: dict[str, list[ConsulInstance]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._errors: dict[str, str] = {}  # the watches failing now -> why
        self.sync_error: str | None = None  # why writing to the store fails now
        self._reported: dict[str, dict[str, str]] = {}  # scope -> key -> problem logged

    @property
    def error(self) -> str | None:
        """Why watching Consul fails now (unreachable, answers it should not), None if it works."""
        if not self._errors:
            return None
        return one_line("; ".join(dict.fromkeys(self._errors.values())), 500)

    @property
    def failure(self) -> str | None:
        """Whatever discovery fails at now: watching Consul or writing to the store."""
        return self.error or self.sync_error

    async def run(self, stop: asyncio.Event) -> None:
        """Watch Consul and sync the store until stopped; never ends before that."""
        async with ConsulClient(self._config.url) as client:
            syncer = asyncio.create_task(self._sync_forever(), name="consul sync")
            try:
                await _until(stop, self._watch_catalog(client), syncer)
            finally:
                for task in [*self._watchers.values(), syncer]:
                    task.cancel()
                await asyncio.gather(*self._watchers.values(), syncer, return_exceptions=True)
                await self._info.close()

    async def _watch_catalog(self, client: ConsulClient) -> None:
        def take(catalog: dict[str, list[str]]) -> None:
            tagged = {n for n, tags in catalog.items() if self._config.tag in tags}
            names = {n for n in tagged if _service_name_ok(n)}
            self._report(
                "the catalog",
                {
                    n[:TEXT_MAX]: f"ignoring service {one_line(n, 60)}: its name is longer than "
                    f"{TEXT_MAX} characters or holds '/' or white space"
                    for n in tagged - names
                },
            )
            for name in sorted(names - self._watchers.keys()):
                self._watchers[name] = asyncio.create_task(
                    self._watch_service(client, name), name=f"consul watch {name}"
                )
            for name in set(self._watchers) - names:
                self._watchers.pop(name).cancel()
                self._services.pop(name, None)
                self._errors.pop(f"service {name}", None)
                self._changed.set()

        await self._follow(
            "the catalog",
            lambda i: client.catalog_services(index=i, wait_s=self._wait_s),
            take,
        )

    async def _watch_service(self, client: ConsulClient, name: str) -> None:
        def take(entries: list[Any]) -> None:
            instances, bad = [], {}
            for position, entry in enumerate(entries):
                try:
                    instance = instance_of(name, entry)
                except BadEntryError as exc:
                    key = exc.consul_id or f"#{position}"
                    bad[key] = f"ignoring instance {key} of service {name}: {exc}"
                    continue
                if self._config.tag in instance.tags:
                    instances.append(instance)
            self._report(f"service {name}", bad)
            self._services[name] = instances
            self._changed.set()

        await self._follow(
            f"service {name}",
            lambda i: client.health_service(name, passing=False, index=i, wait_s=self._wait_s),
            take,
        )

    async def _follow(
        self,
        what: str,
        query: Callable[[int], Awaitable[Indexed[T]]],
        take: Callable[[T], None],
    ) -> None:
        """Run a blocking query for ever, handing each answer to `take`; ends only if cancelled.

        Whatever goes wrong (Consul away, an answer of the wrong shape, a bug) is logged once
        and retried with back-off; an answer without a valid index is asked again with
        back-off too, as a query on index 0 never blocks and would spin.
        """
        index, failures, unindexed = 0, 0, 0
        last_s = -MIN_QUERY_INTERVAL_S
        while True:
            await asyncio.sleep(max(0.0, last_s + MIN_QUERY_INTERVAL_S - time.monotonic()))
            last_s = time.monotonic()
            try:
                answer = await query(index)
                take(answer.value)
            except Exception as exc:
                failures += 1
                index = 0  # ask without blocking next time: a recovery shows at once
                self._failing(what, exc, failures)
                await asyncio.sleep(RETRY.delay_s(failures))
                continue
            if failures:
                self._recovered(what)
            failures = 0
            if answer.index < 1:
                unindexed += 1
                if unindexed == 1:
                    logger.warning(
                        "discovery: Consul answered %s without a valid X-Consul-Index; asking "
                        "again with back-off instead of blocking",
                        what,
                    )
                index = 0
                await asyncio.sleep(RETRY.delay_s(unindexed))
                continue
            unindexed = 0
            index = next_index(index, answer.index)

    def _failing(self, what: str, exc: Exception, failures: int) -> None:
        reason = str(exc) if isinstance(exc, ConsulError) else f"{type(exc).__name__}: {exc}"
        self._errors[what] = one_line(reason, 300)
        if failures == 1:
            logger.error(
                "discovery: %s (watching %s); routing with the last known handlers, retrying "
                "with back-off",
                one_line(reason, 300),
                what,
            )
            if not isinstance(exc, ConsulError):
                logger.debug("discovery: watching %s failed", what, exc_info=exc)

    def _recovered(self, what: str) -> None:
        self._errors.pop(what, None)
        logger.info("discovery: Consul answers again (watching %s)", what)

    def _report(self, scope: str, problems: dict[str, str]) -> None:
        """Log each problem of a scope once: again only when it changes or comes back."""
        before = self._reported.get(scope, {})
        for key, line in problems.items():
            if before.get(key) != line:
                logger.warning("discovery: %s", line)
        self._reported[scope] = problems

    async def _sync_forever(self) -> None:
        failures = 0
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self.sync_once()
            except Exception as exc:  # the store may be away; the change is written later
                failures += 1
                self.sync_error = f"cannot write handlers to the store: {describe(exc)}"
                if failures == 1:
                    logger.error(
                        "discovery: cannot write handlers to the store (%s); retrying with "
                        "back-off",
                        describe(exc),
                    )
                self._changed.set()
                await asyncio.sleep(RETRY.delay_s(failures))
                continue
            if failures:
                logger.info("discovery: handlers written to the store again")
            self.sync_error, failures = None, 0

    async def sync_once(self) -> None:
        """Write what Consul lists now to the store."""
        handlers, problems = await self.handlers()
        changed = await self._store.sync(handlers, SOURCE, problems)
        if changed:
            logger.info("discovery: %d handler change(s) from Consul", changed)
        self._info.forget({i.info_url for group in self._services.values() for i in group})

    async def handlers(self) -> tuple[list[Handler], dict[str, str]]:
        """Handlers for every watched instance, and what is wrong with some of them."""
        await self._info.refresh([i for group in self._services.values() for i in group])
        handlers: list[Handler] = []
        problems: dict[str, str] = {}
        refused: dict[str, str] = {}
        owners: dict[str, str] = {}  # node id -> the Consul id it was given to
        for name, instances in sorted(self._services.items()):
            known: dict[str, Any] = {}
            for instance in sorted(instances, key=lambda i: i.consul_id):
                handler, problem = self._handler(name, instance, known)
                where = f"instance {instance.consul_id} of service {name}"
                if handler is None:
                    refused[instance.consul_id] = f"ignoring {where}: {problem}"
                    continue
                owner = owners.setdefault(handler.node_id, instance.consul_id)
                if owner != instance.consul_id:
                    refused[instance.consul_id] = (
                        f"ignoring {where}: node id {handler.node_id} is also instance {owner}'s "
                        "(give each instance its own node= tag)"
                    )
                    continue
                handlers.append(handler)
                if problem:
                    problems[handler.node_id] = problem
                if handler.problem() is None:
                    known.update(
                        {k: getattr(handler, k) for k in INHERITED_FIELDS if k not in known}
                    )
        self._report("instances", refused)
        return handlers, problems

    def _handler(
        self, name: str, instance: ConsulInstance, inherited: dict[str, Any]
    ) -> tuple[Handler | None, str | None]:
        """The handler of one instance (None if it cannot be stored), and what is wrong with it."""
        tags = {TAG_FIELDS[k]: v for k, v in instance.tags.items() if k in TAG_FIELDS and v}
        info = self._info.get(instance)
        fields = {**info.fields, **tags}
        for key in INHERITED_FIELDS:
            if key not in fields and key in inherited:
                fields[key] = inherited[key]
        handler, left_out = validated(
            {
                "event": "",
                **fields,
                "name": name,
                "service_id": name,
                "endpoint": instance.address,
                "port": instance.port,
                "consul_service_id": instance.consul_id,
                "tags": sorted(instance.tags),
            }
        )
        if handler is None:
            return None, "; ".join(left_out)
        problems = [] if "hostname" in tags else ["no hostname= tag"]
        problems += [f"left out {problem}" for problem in left_out]
        if not instance.passing:
            problems.append("checks not passing: " + "; ".join(instance.failing_checks))
        missing = handler.problem()
        if missing:
            problems += [missing, *([info.note] if info.note else [])]
        enabled = instance.passing and not problems
        if handler.enabled != enabled:
            handler = handler.model_copy(update={"enabled": enabled})
        return handler, "; ".join(problems) or None


def _service_name_ok(name: str) -> bool:
    return 0 < len(name) <= TEXT_MAX and "/" not in name and not any(c.isspace() for c in name)


async def _until(stop: asyncio.Event, work: Any, *alongside: asyncio.Task[None]) -> None:
    """Run a coroutine until it ends or `stop` is set; a task alongside that fails ends it too."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper, *alongside}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, stopper):
            pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for other in alongside:
        error = other.exception() if other.done() and not other.cancelled() else None
        if error is not None:
            raise DiscoveryError(f"{other.get_name()} failed: {describe(error)}")

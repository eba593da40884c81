"""A double of a Consul agent's HTTP API: one node in datacenter dc1, served from its own thread.

It answers the endpoints logistik uses the way Consul's HTTP API documentation (and, where the
documentation is silent, Consul's source) says: agent service registration with TTL checks,
TTL check updates, the agent, catalog and health listings, and blocking queries with
`X-Consul-Index`. Anything else answers 404, a wrong verb 405, a bad body 400, as Consul does.

Consul's behaviour reproduced on purpose:
- a service's checks get the ids `service:<id>` (one check) or `service:<id>:<n>` (several) and
  the name `Service '<name>' check`; a check starts critical unless `Status` is given; a
  re-registration keeps the status its checks already had;
- a TTL check not refreshed within its TTL turns critical with the output `TTL expired`;
- a check critical for longer than its `DeregisterCriticalServiceAfter` (at least 1 minute)
  takes its service away, reaped every 30 seconds;
- `/v1/catalog/services` has its own index (registrations only); `/v1/catalog/service/:name` and
  `/v1/health/service/:name` share the service's index, which check status changes raise too; a
  service that no longer exists answers with the index at which the last service went away;
- a blocking query returns once the index is above `?index=`, otherwise after `?wait=` (Go
  duration, default 5m, at most 10m) plus up to wait/16 of jitter; `?index=0` never blocks;
- the catalog holds the `consul` service of the server itself, and every health entry carries
  the node's `serfHealth` check.

Test-only controls, for what the HTTP API cannot do: `stop()`/`start()` (Consul down and back,
state kept), `wipe()` (Consul lost every registration and its indexes went back), `requests`,
and `tamper` (a hostile or broken Consul: rewrites what the catalog and health listings answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from logistik.kafka.embedded import free_port

DATACENTER = "dc1"
PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
STATUSES = (PASSING, WARNING, CRITICAL)
DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0
OUTPUT_MAX = 4096
SERF_CHECK_ID = "serfHealth"
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION_UNITS.update({"m": 60.0, "h": 3600.0})
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class ApiError(Exception):
    """An HTTP error answer with Consul's status and text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def go_duration_s(text: str) -> float:
    """Seconds in a Go duration string ("10s", "1m30s", "250ms"); ValueError when it is not one."""
    body = text.lstrip("+-")
    sign = -1.0 if text.startswith("-") else 1.0
    if body == "0":
        return 0.0
    total, position = 0.0, 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            raise ValueError(f"time: invalid duration {json.dumps(text)}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not body:
        raise ValueError(f"time: invalid duration {json.dumps(text)}")
    return sign * total


def go_bool(text: str) -> bool:
    """Go's strconv.ParseBool; ValueError for anything else."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


def _norm(key: str) -> str:
    return key.replace("_", "").lower()


def field_of(body: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A field of a request body, matched like Consul does: any case, snake_case too."""
    wanted = _norm(name)
    for key, value in body.items():
        if _norm(key) == wanted:
            return value
    return default


def _duration_field(body: Mapping[str, Any], name: str) -> float:
    """A duration field: a Go duration string, or a number of nanoseconds, as Consul decodes it."""
    value = field_of(body, name)
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ApiError(400, f"Request decode failed: {name}: invalid duration {value!r}")
    if isinstance(value, str):
        try:
            return go_duration_s(value)
        except ValueError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None
    return float(value) / 1e9


def _typed(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = field_of(body, name)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ApiError(400, f"Request decode failed: '{name}' has the wrong type")
    return value


def _strings(body: Mapping[str, Any], name: str) -> list[str]:
    value = _typed(body, name, list, [])
    if not all(isinstance(item, str) for item in value):
        raise ApiError(400, f"Request decode failed: '{name}' must be a list of strings")
    return list(value)


@dataclass
class Service:
    """A service instance on the node."""

    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    weights: dict[str, int]
    enable_tag_override: bool = False
    create_index: int = 0
    modify_index: int = 0

    def same_as(self, other: Service) -> bool:
        """True when a re-registration changes nothing the catalog shows."""
        keys = ("id", "name", "tags", "address", "port", "meta", "weights", "enable_tag_override")
        return all(getattr(self, key) == getattr(other, key) for key in keys)


@dataclass
class Check:
    """A health check: a service's TTL check, or the node's serfHealth."""

    check_id: str
    name: str
    status: str
    service_id: str = ""
    service_name: str = ""
    service_tags: list[str] = field(default_factory=list)
    notes: str = ""
    output: str = ""
    type: str = ""
    ttl_s: float = 0.0
    interval: str = ""
    timeout: str = ""
    deregister_after_s: float = 0.0
    expires_at: float | None = None
    critical_since: float | None = None
    create_index: int = 0
    modify_index: int = 0


@dataclass
class CheckSpec:
    """A check as a registration asks for it."""

    check_id: str
    name: str
    status: str
    notes: str
    type: str
    ttl_s: float
    interval_s: float
    timeout_s: float
    deregister_after_s: float


def parse_check(body: Mapping[str, Any], service: Service, position: int, count: int) -> CheckSpec:
    """Validate one entry of Check/Checks like Consul's CheckType.Validate, and name it."""
    ttl_s = _duration_field(body, "TTL")
    interval_s = _duration_field(body, "Interval")
    kinds = ("HTTP", "TCP", "GRPC", "H2PING", "Args", "ScriptArgs", "DockerContainerID")
    probing = next((kind for kind in kinds if field_of(body, kind)), "")
    if interval_s > 0 and ttl_s > 0:
        raise ApiError(400, "Invalid check: Interval and TTL cannot both be specified")
    if probing and interval_s <= 0:
        message = "Interval must be > 0 for Script, HTTP, H2PING, or TCP checks"
        raise ApiError(400, f"Invalid check: {message}")
    if not probing and ttl_s <= 0:
        raise ApiError(400, "Invalid check: TTL must be > 0 for TTL checks")
    status = _typed(body, "Status", str, "")
    if status and status not in STATUSES:
        raise ApiError(400, "Status for checks must 'passing', 'warning', 'critical'")
    check_id = _typed(body, "CheckID", str, "") or _typed(body, "ID", str, "")
    if not check_id:
        check_id = f"service:{service.id}" + (f":{position + 1}" if count > 1 else "")
    return CheckSpec(
        check_id=check_id,
        name=_typed(body, "Name", str, "") or f"Service '{service.name}' check",
        status=status or CRITICAL,
        notes=_typed(body, "Notes", str, ""),
        type="ttl" if not probing else probing.lower().replace("scriptargs", "script"),
        ttl_s=ttl_s,
        interval_s=interval_s,
        timeout_s=_duration_field(body, "Timeout"),
        deregister_after_s=_duration_field(body, "DeregisterCriticalServiceAfter"),
    )


def parse_service(body: Mapping[str, Any]) -> tuple[Service, list[Mapping[str, Any]]]:
    """A registration body's service and its raw check entries, validated like Consul does."""
    name = _typed(body, "Name", str, "")
    if not name:
        raise ApiError(400, "Missing service name")
    address = _typed(body, "Address", str, "")
    if address in ("0.0.0.0", "::", "[::]"):
        raise ApiError(400, "Invalid service address")
    service = Service(
        id=_typed(body, "ID", str, "") or name,
        name=name,
        tags=_strings(body, "Tags"),
        address=address,
        port=_typed(body, "Port", int, 0),
        meta={str(k): str(v) for k, v in _typed(body, "Meta", dict, {}).items()},
        weights=_typed(body, "Weights", dict, None) or {"Passing": 1, "Warning": 1},
        enable_tag_override=bool(field_of(body, "EnableTagOverride", False)),
    )
    checks: list[Mapping[str, Any]] = []
    single = _typed(body, "Check", dict, {})
    if any(value not in (None, "", 0, [], {}) for value in single.values()):
        checks.append(single)
    for entry in _typed(body, "Checks", list, []):
        if not isinstance(entry, dict):
            raise ApiError(400, "Request decode failed: 'Checks' must hold objects")
        checks.append(entry)
    return service, checks


def _go_duration_text(seconds: float) -> str:
    if seconds <= 0:
        return ""
    return f"{seconds:g}s"


class Store:
    """The node's services and checks, Consul's indexes, and what each endpoint answers."""

    def __init__(self, node: str, address: str, deregister_min_s: float) -> None:
        self.lock = threading.RLock()
        self.node = node
        self.address = address
        self.node_id = str(uuid.uuid4())
        self.deregister_min_s = deregister_min_s
        self.reset()

    def reset(self) -> None:
        """Back to a freshly bootstrapped single-server cluster."""
        with self.lock:
            self.index = 5  # raft configuration, autopilot and the node itself come first
            self.node_index = self.index
            self.services: dict[str, Service] = {}
            self.checks: dict[str, Check] = {}
            self.service_index: dict[str, int] = {}
            self.services_index = 0
            self.extinction_index = 0
            self.server = Service(
                "consul", "consul", [], "", 8300, {}, {"Passing": 1, "Warning": 1}
            )
            self.serf = Check(SERF_CHECK_ID, "Serf Health Status", PASSING)
            self.serf.output = "Agent alive and reachable"
            self.serf.create_index = self.serf.modify_index = self._bump()
            self._store_service(self.server)

    def _bump(self, *names: str) -> int:
        self.index += 1
        for name in names:
            self.service_index[name.lower()] = self.index
        return self.index

    def _store_service(self, service: Service) -> None:
        index = self._bump(service.name)
        service.modify_index = index
        service.create_index = service.create_index or index
        self.services_index = index

    def _instances(self, name: str) -> list[Service]:
        wanted = name.lower()
        found = [s for s in (self.server, *self.services.values()) if s.name.lower() == wanted]
        return sorted(found, key=lambda service: service.id)

    def _went_away(self, name: str) -> None:
        if not self._instances(name):
            self.service_index.pop(name.lower(), None)
            self.extinction_index = self.index

    # --- writes -------------------------------------------------------------------------------

    def register(self, body: Mapping[str, Any], replace_checks: bool, now: float) -> None:
        """PUT /v1/agent/service/register."""
        service, raw_checks = parse_service(body)
        specs = [parse_check(raw, service, i, len(raw_checks)) for i, raw in enumerate(raw_checks)]
        with self.lock:
            old = self.services.get(service.id)
            if old is None or not old.same_as(service):
                service.create_index = old.create_index if old else 0
                self.services[service.id] = service
                self._store_service(service)
                if old is not None and old.name.lower() != service.name.lower():
                    self._bump(old.name)
                    self._went_away(old.name)
            else:
                service = old
            kept = {spec.check_id for spec in specs}
            if replace_checks:
                for check in self._checks_of(service.id):
                    if check.check_id not in kept:
                        self._drop_check(check)
            for spec in specs:
                self._add_check(service, spec, now)

    def _add_check(self, service: Service, spec: CheckSpec, now: float) -> None:
        old = self.checks.get(spec.check_id)
        check = Check(
            check_id=spec.check_id,
            name=spec.name,
            status=old.status if old else spec.status,
            service_id=service.id,
            service_name=service.name,
            service_tags=list(service.tags),
            notes=spec.notes,
            output=old.output if old else "",
            type=spec.type,
            ttl_s=spec.ttl_s,
            interval=_go_duration_text(spec.interval_s),
            timeout=_go_duration_text(spec.timeout_s),
            deregister_after_s=spec.deregister_after_s,
            expires_at=now + spec.ttl_s if spec.ttl_s > 0 else None,
            critical_since=old.critical_since if old else None,
        )
        if check.status == CRITICAL and check.critical_since is None:
            check.critical_since = now
        changed = old is None or (old.status, old.name, old.notes, old.service_tags) != (
            check.status,
            check.name,
            check.notes,
            check.service_tags,
        )
        check.create_index = old.create_index if old else 0
        check.modify_index = old.modify_index if old else 0
        if changed:
            check.modify_index = self._bump(service.name)
            check.create_index = check.create_index or check.modify_index
        self.checks[check.check_id] = check

    def _checks_of(self, service_id: str) -> list[Check]:
        return [check for check in self.checks.values() if check.service_id == service_id]

    def _drop_check(self, check: Check) -> None:
        del self.checks[check.check_id]
        self._bump(check.service_name)

    def deregister(self, service_id: str) -> None:
        """PUT /v1/agent/service/deregister/:service_id."""
        with self.lock:
            service = self.services.pop(service_id, None)
            if service is None:
                message = f'Unknown service ID "{service_id}". Ensure that the service ID is '
                raise ApiError(404, message + "passed, not the service name.")
            for check in self._checks_of(service_id):
                del self.checks[check.check_id]
            self.services_index = self._bump(service.name)
            self._went_away(service.name)

    def update_ttl(self, check_id: str, status: str, output: str, now: float) -> None:
        """PUT /v1/agent/check/{pass,warn,fail,update}/:check_id."""
        with self.lock:
            check = self.checks.get(check_id)
            if check is None:
                message = f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
                raise ApiError(404, message + "not the check name.")
            if check.ttl_s <= 0:
                raise ApiError(500, f'CheckID "{check_id}" does not have associated TTL')
            check.expires_at = now + check.ttl_s
            self._set_status(check, status, output[:OUTPUT_MAX], now)

    def _set_status(self, check: Check, status: str, output: str, now: float) -> None:
        """A status change is synced to the catalog at once; an output-only change is not."""
        check.output = output
        if status == check.status:
            return
        check.status = status
        check.critical_since = now if status == CRITICAL else None
        check.modify_index = self._bump(check.service_name)

    def tick(self, now: float, reap: bool) -> bool:
        """Expire TTL checks (and reap long-critical services when `reap`); True if changed."""
        with self.lock:
            before = self.index
            for check in list(self.checks.values()):
                if check.expires_at is not None and now >= check.expires_at:
                    check.expires_at = None
                    expired = "TTL expired"
                    if check.output:
                        expired += f" (last output before timeout follows): {check.output}"
                    self._set_status(check, CRITICAL, expired, now)
            if reap:
                self._reap(now)
            return self.index != before

    def _reap(self, now: float) -> None:
        for check in list(self.checks.values()):
            after = check.deregister_after_s
            if after <= 0 or check.critical_since is None:
                continue
            if now - check.critical_since >= max(after, self.deregister_min_s):
                with contextlib.suppress(ApiError):
                    self.deregister(check.service_id)

    # --- reads --------------------------------------------------------------------------------

    def index_of(self, name: str) -> int:
        """The X-Consul-Index of /v1/catalog/service/:name and /v1/health/service/:name."""
        with self.lock:
            return self.service_index.get(name.lower()) or self.extinction_index or self.index

    def agent_services(self) -> dict[str, Any]:
        """GET /v1/agent/services."""
        with self.lock:
            return {sid: self._agent_service(s) for sid, s in sorted(self.services.items())}

    def _agent_service(self, service: Service) -> dict[str, Any]:
        answer = {
            "ID": service.id,
            "Service": service.name,
            "Tags": list(service.tags),
            "Meta": dict(service.meta),
            "Port": service.port,
            "Address": service.address,
            "Weights": dict(service.weights),
            "EnableTagOverride": service.enable_tag_override,
            "Datacenter": DATACENTER,
        }
        tagged = self._tagged_addresses(service)
        if tagged:
            answer["TaggedAddresses"] = tagged
        return answer

    @staticmethod
    def _tagged_addresses(service: Service) -> dict[str, Any]:
        if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", service.address):
            return {}
        entry = {"Address": service.address, "Port": service.port}
        return {"lan_ipv4": dict(entry), "wan_ipv4": dict(entry)}

    def agent_checks(self) -> dict[str, Any]:
        """GET /v1/agent/checks."""
        with self.lock:
            return {cid: self._check(c) for cid, c in sorted(self.checks.items())}

    def _check(self, check: Check) -> dict[str, Any]:
        return {
            "Node": self.node,
            "CheckID": check.check_id,
            "Name": check.name,
            "Status": check.status,
            "Notes": check.notes,
            "Output": check.output,
            "ServiceID": check.service_id,
            "ServiceName": check.service_name,
            "ServiceTags": list(check.service_tags),
            "Type": check.type,
            "Interval": check.interval,
            "Timeout": check.timeout,
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": check.create_index,
            "ModifyIndex": check.modify_index,
        }

    def catalog_services(self) -> tuple[int, dict[str, list[str]]]:
        """GET /v1/catalog/services: each name with the union of its instances' tags."""
        with self.lock:
            answer: dict[str, list[str]] = {}
            for service in (self.server, *self.services.values()):
                tags = answer.setdefault(service.name, [])
                tags.extend(tag for tag in service.tags if tag not in tags)
            return max(self.services_index, 1), answer

    def catalog_service(self, name: str, tags: Iterable[str]) -> tuple[int, list[dict[str, Any]]]:
        """GET /v1/catalog/service/:name."""
        with self.lock:
            entries = [self._catalog_entry(s) for s in self._tagged(name, tags)]
            return self.index_of(name), entries

    def _tagged(self, name: str, tags: Iterable[str]) -> list[Service]:
        wanted = [tag.lower() for tag in tags]
        return [
            service
            for service in self._instances(name)
            if all(tag in (t.lower() for t in service.tags) for tag in wanted)
        ]

    def node_json(self) -> dict[str, Any]:
        """The node as /v1/health/service shows it."""
        return {
            "ID": self.node_id,
            "Node": self.node,
            "Address": self.address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": {
                "lan": self.address,
                "lan_ipv4": self.address,
                "wan": self.address,
                "wan_ipv4": self.address,
            },
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": self.node_index,
            "ModifyIndex": self.node_index,
        }

    def _catalog_entry(self, service: Service) -> dict[str, Any]:
        node = self.node_json()
        entry: dict[str, Any] = {key: node[key] for key in ("ID", "Node", "Address", "Datacenter")}
        entry["TaggedAddresses"] = node["TaggedAddresses"]
        entry["NodeMeta"] = node["Meta"]
        entry.update(
            {
                "ServiceKind": "",
                "ServiceID": service.id,
                "ServiceName": service.name,
                "ServiceTags": list(service.tags),
                "ServiceAddress": service.address,
                "ServiceWeights": dict(service.weights),
                "ServiceMeta": dict(service.meta),
                "ServicePort": service.port,
                "ServiceEnableTagOverride": service.enable_tag_override,
                "ServiceProxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
                "ServiceConnect": {},
                "CreateIndex": service.create_index,
                "ModifyIndex": service.modify_index,
            }
        )
        tagged = self._tagged_addresses(service)
        if tagged:
            entry["ServiceTaggedAddresses"] = tagged
        return entry

    def health_service(
        self, name: str, tags: Iterable[str], passing: bool
    ) -> tuple[int, list[dict[str, Any]]]:
        """GET /v1/health/service/:name: node, service and every check that bears on it."""
        with self.lock:
            entries = []
            for service in self._tagged(name, tags):
                checks = [self.serf, *self._checks_of(service.id)]
                if passing and any(check.status != PASSING for check in checks):
                    continue
                body = self._agent_service(service)
                del body["Datacenter"]
                body["Proxy"] = {"Mode": "", "MeshGateway": {}, "Expose": {}}
                body["Connect"] = {}
                body["CreateIndex"] = service.create_index
                body["ModifyIndex"] = service.modify_index
                health = [self._check(check) for check in checks]
                entries.append({"Node": self.node_json(), "Service": body, "Checks": health})
            return self.index_of(name), entries


Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]
Tamper = Callable[[str, Any, dict[str, str]], tuple[Any, dict[str, str]]]


@dataclass(frozen=True)
class Route:
    """One endpoint: an exact path, or a prefix whose rest is the argument."""

    path: str
    prefix: bool
    methods: tuple[str, ...]
    handler: Handler


class ConsulDouble:
    """A Consul agent double over HTTP on loopback; stop() and start() keep its state."""

    def __init__(
        self,
        *,
        node: str = "node-1",
        reap_interval_s: float = 30.0,
        deregister_min_s: float = 60.0,
        tick_s: float = 0.02,
    ) -> None:
        self.port = free_port()
        self.store = Store(node, "127.0.0.1", deregister_min_s)
        self.reap_interval_s = reap_interval_s
        self.tick_s = tick_s
        self.requests: list[tuple[str, str]] = []
        # (path, answer, headers) -> (answer, headers): rewrites the catalog and health answers.
        self.tamper: Tamper | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._blocked: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Event | None = None
        self._ready = threading.Event()
        self._routes = self._route_table()

    @property
    def url(self) -> str:
        """The agent's HTTP address, e.g. http://127.0.0.1:8500."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the double answers on its port."""
        return self._thread is not None

    def start(self) -> ConsulDouble:
        """Listen on the port (the same one after a stop) and return when it answers."""
        if self._thread is not None:
            return self
        self._ready.clear()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="consul-double", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Consul double did not start")
        return self

    def stop(self) -> None:
        """Stop answering, like a Consul agent going down: blocked queries lose their connection."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop, self._thread = None, None

    def wipe(self) -> None:
        """Forget every registration and reset the indexes, like a Consul that lost its data."""
        self.store.reset()
        self._notify_threadsafe()

    def __enter__(self) -> ConsulDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- server plumbing ----------------------------------------------------------------------

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        loop.run_until_complete(self._runner.setup())
        loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._changed = asyncio.Event()
        self._ticker = loop.create_task(self._tick_forever())
        self._ready.set()
        loop.run_forever()

    async def _shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._blocked):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _tick_forever(self) -> None:
        next_reap = time.monotonic() + self.reap_interval_s
        while True:
            now = time.monotonic()
            reap = now >= next_reap
            if reap:
                next_reap = now + self.reap_interval_s
            if self.store.tick(now, reap):
                self._notify()
            await asyncio.sleep(self.tick_s)

    def _notify(self) -> None:
        """Wake every blocking query so it compares its index again."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._notify)

    def _route_table(self) -> list[Route]:
        put, get = ("PUT",), ("GET",)
        return [
            Route("/v1/agent/services", False, get, self._agent_services),
            Route("/v1/agent/checks", False, get, self._agent_checks),
            Route("/v1/agent/service/register", False, put, self._register),
            Route("/v1/agent/service/deregister/", True, put, self._deregister),
            Route("/v1/agent/check/pass/", True, put, self._ttl(PASSING)),
            Route("/v1/agent/check/warn/", True, put, self._ttl(WARNING)),
            Route("/v1/agent/check/fail/", True, put, self._ttl(CRITICAL)),
            Route("/v1/agent/check/update/", True, put, self._check_update),
            Route("/v1/catalog/services", False, get, self._catalog_services),
            Route("/v1/catalog/service/", True, get, self._catalog_service),
            Route("/v1/health/service/", True, get, self._health_service),
            Route("/v1/status/leader", False, get, self._leader),
        ]

    def _match(self, path: str) -> tuple[Route, str] | None:
        for route in self._routes:
            if route.prefix and path.startswith(route.path):
                return route, path[len(route.path) :]
            if not route.prefix and path == route.path:
                return route, ""
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        found = self._match(request.path)
        if found is None:
            return web.Response(status=404)
        route, argument = found
        allow = ",".join(("OPTIONS", *route.methods))
        if request.method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": allow})
        if request.method not in route.methods:
            text = f"method {request.method} not allowed"
            return web.Response(status=405, text=text, headers={"Allow": allow})
        try:
            self._check_datacenter(request)
            return await route.handler(request, argument)
        except ApiError as exc:
            return web.Response(status=exc.status, text=exc.text)

    @staticmethod
    def _check_datacenter(request: web.Request) -> None:
        if request.query.get("dc", DATACENTER) not in ("", DATACENTER):
            raise ApiError(500, "No path to datacenter")
        if "filter" in request.query:
            raise ApiError(400, "the Consul double does not evaluate ?filter expressions")

    @staticmethod
    async def _json_body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            raise ApiError(400, "Request decode failed: EOF")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Request decode failed: the body must be a JSON object")
        return body

    # --- agent endpoints ----------------------------------------------------------------------

    async def _agent_services(self, _request: web.Request, _arg: str) -> web.StreamResponse:
        return web.json_response(self.store.agent_services())

    async def _agent_checks(self, _request: web.Request, _arg: str) -> web.StreamResponse:
        return web.json_response(self.store.agent_checks())

    async def _register(self, request: web.Request, _arg: str) -> web.StreamResponse:
        body = await self._json_body(request)
        replace = "replace-existing-checks" in request.query
        self.store.register(body, replace, time.monotonic())
        self._notify()
        return web.Response(status=200)

    async def _deregister(self, _request: web.Request, service_id: str) -> web.StreamResponse:
        if not service_id:
            raise ApiError(400, "Missing service ID")
        self.store.deregister(service_id)
        self._notify()
        return web.Response(status=200)

    def _ttl(self, status: str) -> Handler:
        async def handle(request: web.Request, check_id: str) -> web.StreamResponse:
            note = request.query.get("note", "")
            self.store.update_ttl(check_id, status, note, time.monotonic())
            self._notify()
            return web.Response(status=200)

        return handle

    async def _check_update(self, request: web.Request, check_id: str) -> web.StreamResponse:
        body = await self._json_body(request)
        status = field_of(body, "Status", "")
        if status not in STATUSES:
            raise ApiError(400, f"Invalid check status: '{status}'")
        output = str(field_of(body, "Output", "") or "")
        self.store.update_ttl(check_id, status, output, time.monotonic())
        self._notify()
        return web.Response(status=200)

    async def _leader(self, _request: web.Request, _arg: str) -> web.StreamResponse:
        return web.json_response(f"{self.store.address}:8300")

    # --- catalog and health (blocking) --------------------------------------------------------

    async def _catalog_services(self, request: web.Request, _arg: str) -> web.StreamResponse:
        await self._block(request, lambda: self.store.catalog_services()[0])
        index, answer = self.store.catalog_services()
        return self._indexed(request, answer, index)

    async def _catalog_service(self, request: web.Request, name: str) -> web.StreamResponse:
        if not name:
            raise ApiError(400, "Missing service name")
        await self._block(request, lambda: self.store.index_of(name))
        tags = request.query.getall("tag", [])
        index, answer = self.store.catalog_service(name, tags)
        return self._indexed(request, answer, index)

    async def _health_service(self, request: web.Request, name: str) -> web.StreamResponse:
        if not name:
            raise ApiError(400, "Missing service name")
        passing = False
        if "passing" in request.query:
            value = request.query.get("passing", "")
            try:
                passing = value == "" or go_bool(value)
            except ValueError:
                raise ApiError(400, "Invalid value for ?passing") from None
        await self._block(request, lambda: self.store.index_of(name))
        tags = request.query.getall("tag", [])
        index, answer = self.store.health_service(name, tags, passing)
        return self._indexed(request, answer, index)

    def _indexed(self, request: web.Request, answer: Any, index: int) -> web.Response:
        headers = {
            "X-Consul-Index": str(max(index, 1)),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
        }
        tamper = self.tamper
        if tamper is not None:
            answer, headers = tamper(request.path, answer, headers)
        return web.json_response(answer, headers=headers)

    @staticmethod
    def _blocking_params(request: web.Request) -> tuple[int, float]:
        wait_s = DEFAULT_WAIT_S
        if request.query.get("wait"):
            try:
                wait_s = go_duration_s(request.query["wait"])
            except ValueError:
                raise ApiError(400, "Invalid wait time") from None
        min_index = 0
        if request.query.get("index"):
            text = request.query["index"]
            if not text.isdigit():
                raise ApiError(400, "Invalid index")
            min_index = int(text)
        if wait_s <= 0:
            wait_s = DEFAULT_WAIT_S
        return min_index, min(wait_s, MAX_WAIT_S)

    async def _block(self, request: web.Request, index_of: Callable[[], int]) -> None:
        """Hold a blocking query until its index is above ?index= or ?wait= (plus jitter) ends."""
        min_index, wait_s = self._blocking_params(request)
        if min_index == 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s + random.uniform(0, wait_s / 16)
        task = asyncio.current_task()
        assert task is not None
        self._blocked.add(task)
        try:
            while True:
                changed = self._changed
                remaining = deadline - loop.time()
                if index_of() > min_index or changed is None or remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self._blocked.discard(task)

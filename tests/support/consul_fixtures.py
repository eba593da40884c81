"""Consul for tests: the double, or a real Consul agent when LK_TEST_CONSUL_URL is set.

With a real Consul, tests name what they register with `consul.name(...)` (a prefix unique to
the test) and the fixture deregisters whatever is left under that prefix afterwards. Tests that
need the double's own controls call `consul.require_double()`, which skips on a real Consul.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.consul_double import ConsulDouble

REAL_CONSUL_ENV = "LK_TEST_CONSUL_URL"


@dataclass(frozen=True)
class HttpAnswer:
    """An HTTP answer: status, headers and body (JSON-decoded when it is JSON)."""

    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.text)

    @property
    def index(self) -> int:
        """The X-Consul-Index header."""
        return int(self.headers["X-Consul-Index"])


def http(method: str, url: str, body: Any = None, timeout_s: float = 30.0) -> HttpAnswer:
    """One HTTP request; error statuses are answers too, not exceptions."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return HttpAnswer(response.status, dict(response.headers), response.read().decode())
    except urllib.error.HTTPError as exc:
        return HttpAnswer(exc.code, dict(exc.headers), exc.read().decode())


@dataclass
class ConsulTarget:
    """The Consul a test talks to: its URL, and the double when it is one."""

    url: str
    double: ConsulDouble | None
    prefix: str = field(default_factory=lambda: f"lk-test-{uuid.uuid4().hex[:8]}")
    tracked: set[str] = field(default_factory=set)

    @property
    def real(self) -> bool:
        """True when the tests run against a real Consul."""
        return self.double is None

    @property
    def hostport(self) -> str:
        """host:port of the agent, as `--consul-agent` takes it."""
        return urllib.parse.urlsplit(self.url).netloc

    def name(self, label: str) -> str:
        """A service name or id unique to this test (cleaned up on a real Consul)."""
        return f"{self.prefix}-{label}"

    def require_double(self) -> ConsulDouble:
        """The double, or skip the test when it runs against a real Consul."""
        if self.double is None:
            pytest.skip(f"needs the Consul double's test controls; {REAL_CONSUL_ENV} is set")
        return self.double

    def get(self, path: str, timeout_s: float = 30.0) -> HttpAnswer:
        """GET a path of the HTTP API, e.g. /v1/agent/services."""
        return http("GET", self.url + path, timeout_s=timeout_s)

    def put(self, path: str, body: Any = None) -> HttpAnswer:
        """PUT to a path of the HTTP API with an optional JSON body."""
        return http("PUT", self.url + path, body if body is not None else b"")

    def service_ids(self) -> set[str]:
        """Ids of the services the agent holds."""
        return set(self.get("/v1/agent/services").json())

    def passing(self, name: str) -> list[dict[str, Any]]:
        """The passing instances of a service, as /v1/health/service/:name?passing answers."""
        answer = self.get(f"/v1/health/service/{name}?passing")
        assert answer.status == 200, answer.text
        entries: list[dict[str, Any]] = answer.json()
        return entries

    def track(self, service_id: str) -> None:
        """Deregister this service id after the test even though it lacks the test's prefix."""
        self.tracked.add(service_id)

    def clean_up(self) -> None:
        """Deregister every service of this test left on the agent."""
        for service_id, service in self.get("/v1/agent/services").json().items():
            names = (service_id, service.get("Service", ""))
            if service_id in self.tracked or any(n.startswith(self.prefix) for n in names):
                self.put(f"/v1/agent/service/deregister/{urllib.parse.quote(service_id)}")


@pytest.fixture
def consul() -> Iterator[ConsulTarget]:
    """A Consul agent for one test: a fresh double, or the real one named by LK_TEST_CONSUL_URL."""
    real = os.environ.get(REAL_CONSUL_ENV)
    if real:
        target = ConsulTarget(real.rstrip("/"), None)
        try:
            yield target
        finally:
            target.clean_up()
        return
    with ConsulDouble() as double:
        yield ConsulTarget(double.url, double)

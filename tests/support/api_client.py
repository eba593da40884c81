"""A small HTTP client for the API tests: JSON in and out, cookies kept, redirects not followed."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from tests.support.harness import RouterThread, make_config

TOKEN = "tok-7f3a9c2e51d84b6f"
OTHER_TOKEN = "tok-second-0c1d2e3f"
PASSWORD = "correct horse battery staple"
SESSION_SECRET = "session-secret-5e6f7a8b9c"
CLIENT_SECRET = "oidc-client-secret-1a2b3c"
SECRETS = (TOKEN, OTHER_TOKEN, PASSWORD, SESSION_SECRET, CLIENT_SECRET)


def quiet_config(servers: str, auth: dict[str, Any] | None = None, **web: Any) -> dict[str, Any]:
    """A router config that consumes nothing (no static handler, no reload): fast to stop."""
    return make_config(servers, [], discovery={"refresh_s": 3600}, web={"auth": auth or {}, **web})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


@dataclass
class Reply:
    """An HTTP answer."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode("utf-8", "replace")

    @property
    def location(self) -> str:
        """The Location header of a redirect."""
        return str(self.headers.get("Location", ""))


@dataclass
class Client:
    """Talks to one base URL like a browser would: keeps cookies, sends a token when given."""

    base: str
    token: str | None = None
    cookies: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (value, path)
    _opener: urllib.request.OpenerDirector = field(
        default_factory=lambda: urllib.request.build_opener(_NoRedirect())
    )

    @classmethod
    def of(cls, running: RouterThread, token: str | None = None) -> Client:
        """A client of a running router's API."""
        return cls(f"http://127.0.0.1:{running.config.web.port}", token)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Send a request; `body` is sent as JSON, `raw` as it is."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        request_path = urlsplit(url).path
        jar = [f"{k}={v}" for k, (v, p) in self.cookies.items() if request_path.startswith(p)]
        if jar:
            sent["Cookie"] = "; ".join(jar)
        request = urllib.request.Request(url, data, {**sent, **(headers or {})}, method=method)
        try:
            with self._opener.open(request, timeout=10) as response:
                reply = Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as exc:
            reply = Reply(exc.code, exc.headers, exc.read())
        self._keep(reply)
        return reply

    def _keep(self, reply: Reply) -> None:
        for header in reply.headers.get_all("Set-Cookie") or []:
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(header)
            for name, morsel in cookie.items():
                if morsel["max-age"] == "0" or not morsel.value.strip('"'):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = (morsel.value, morsel["path"] or "/")

    def get(self, path: str, **kwargs: Any) -> Reply:
        """GET a path."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        """POST JSON to a path."""
        return self.request("POST", path, body, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        """PUT JSON to a path."""
        return self.request("PUT", path, body, **kwargs)

    def patch(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        """PATCH JSON to a path."""
        return self.request("PATCH", path, body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Reply:
        """DELETE a path."""
        return self.request("DELETE", path, **kwargs)

    def views(self, **filters: str) -> dict[str, dict[str, Any]]:
        """GET /api/handlers as a dict by node id."""
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        reply = self.get(f"/api/handlers?{query}" if query else "/api/handlers")
        assert reply.status == 200, reply.text
        return {view["node_id"]: view for view in reply.json()}


def refused(reply: Reply, status: int, *words: str) -> None:
    """Assert a refusal: the status, and a one-line `detail` holding every word."""
    assert reply.status == status, (reply.status, reply.text)
    detail = reply.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail, detail
    for word in words:
        assert word in detail, (word, detail)


def sample(metrics: str, metric: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    found = sample_or_none(metrics, metric, **labels)
    return 0.0 if found is None else found


def sample_or_none(metrics: str, metric: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, None when there is none."""
    for line in metrics.splitlines():
        if not line.startswith(metric + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None

"""A small asyncio client for the parts of Consul's HTTP API that logistik uses.

Blocking queries follow Consul's rules (see `next_index`): pass the index of the previous
answer as `index`, reset to 0 when an answer's index goes backwards, never block on index 0
by mistake. A blocking query may return without a change; compare the data, not the index.
An answer without a positive X-Consul-Index has index 0, and one of the wrong shape (not the
object or list the endpoint answers) is a ConsulError: callers back off on both.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp

from logistik.errors import DiscoveryError, one_line

T = TypeVar("T")
DEFAULT_PORT = 8500
JITTER_FRACTION = 16  # Consul adds up to wait/16 to a blocking query's wait


class ConsulError(DiscoveryError):
    """Consul could not be reached, or refused a request; `status` is None when unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Indexed(Generic[T]):
    """An answer to a blocking query: the data and its X-Consul-Index."""

    index: int
    value: T


def next_index(previous: int, returned: int) -> int:
    """The index to block on next: 0 (start over) if it went backwards, else at least 1."""
    if returned < previous:
        return 0
    return max(returned, 1)


def agent_url(value: str) -> str:
    """The base URL of a Consul agent given as host, host:port, [v6]:port or http(s)://URL."""
    text = value.strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL of a Consul agent")
        return f"{parts.scheme}://{parts.netloc}"
    host, port = _split_host_port(text)
    if not host:
        raise ValueError(f"{value!r} is not host or host:port")
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _split_host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if rest else str(DEFAULT_PORT)
    elif text.count(":") > 1:
        ipaddress.IPv6Address(text)  # a bare IPv6 address has no port
        host, port_text = text, str(DEFAULT_PORT)
    else:
        host, _, port_text = text.partition(":")
        port_text = port_text or str(DEFAULT_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def go_duration(seconds: float) -> str:
    """A duration as Consul (Go) parses it: whole seconds as "10s", else milliseconds."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        return os.strerror(error.errno).lower() if error.errno else str(error) or "cannot connect"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by Consul"
    return str(exc) or type(exc).__name__


class ConsulClient:
    """Talks to one Consul agent over HTTP; use `async with ConsulClient(url) as client`."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"X-Consul-Token": token} if token else {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ConsulClient:
        self._session = aiohttp.ClientSession(headers=self._headers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def register_service(
        self, definition: Mapping[str, Any], *, replace_existing_checks: bool = True
    ) -> None:
        """PUT /v1/agent/service/register (Name, ID, Address, Port, Tags, Meta, Check...)."""
        params = {"replace-existing-checks": "true"} if replace_existing_checks else {}
        await self._request("PUT", "/v1/agent/service/register", params=params, body=definition)

    async def deregister_service(self, service_id: str) -> bool:
        """PUT /v1/agent/service/deregister/:id; False when the agent did not know the service."""
        path = f"/v1/agent/service/deregister/{quote(service_id, safe='')}"
        status, _, _ = await self._request("PUT", path, allow_404=True)
        return status != 404

    async def pass_check(self, check_id: str, note: str = "") -> bool:
        """PUT /v1/agent/check/pass/:id; False when the agent does not know the check."""
        params = {"note": note} if note else {}
        path = f"/v1/agent/check/pass/{quote(check_id, safe='')}"
        status, _, _ = await self._request("PUT", path, params=params, allow_404=True)
        return status != 404

    async def catalog_services(
        self, *, index: int = 0, wait_s: float | None = None
    ) -> Indexed[dict[str, list[str]]]:
        """GET /v1/catalog/services: every service name with its tags (blocking if index > 0)."""
        answer = await self._blocking("/v1/catalog/services", [], index, wait_s)
        if not isinstance(answer.value, dict):
            raise self._shape_error("/v1/catalog/services", "an object", answer.value)
        return Indexed(
            answer.index,
            {
                str(name): [tag for tag in tags if isinstance(tag, str)]
                for name, tags in answer.value.items()
                if isinstance(tags, list)
            },
        )

    async def health_service(
        self,
        name: str,
        *,
        passing: bool = True,
        tags: Sequence[str] = (),
        index: int = 0,
        wait_s: float | None = None,
    ) -> Indexed[list[dict[str, Any]]]:
        """GET /v1/health/service/:name: entries {Node, Service, Checks} (blocking if index > 0)."""
        params = [("tag", tag) for tag in tags]
        if passing:
            params.append(("passing", "1"))
        path = f"/v1/health/service/{quote(name, safe='')}"
        answer = await self._blocking(path, params, index, wait_s)
        if not isinstance(answer.value, list):
            raise self._shape_error(path, "a list", answer.value)
        return Indexed(answer.index, answer.value)

    def _shape_error(self, path: str, wanted: str, value: Any) -> ConsulError:
        got = "text" if isinstance(value, str) else type(value).__name__
        return ConsulError(f"Consul at {self.url} answered {path} with {got}, not {wanted}")

    async def _blocking(
        self, path: str, params: list[tuple[str, str]], index: int, wait_s: float | None
    ) -> Indexed[Any]:
        timeout_s = self.timeout_s
        if index > 0:
            params = [*params, ("index", str(index))]
            if wait_s is not None:
                params.append(("wait", go_duration(wait_s)))
            timeout_s += (wait_s if wait_s is not None else 300.0) * (1 + 1 / JITTER_FRACTION)
        _, headers, body = await self._request("GET", path, params=params, timeout_s=timeout_s)
        text = headers.get("X-Consul-Index", "")
        returned = int(text) if text.isdigit() and len(text) < 20 else 0
        return Indexed(returned, body)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
        allow_404: bool = False,
        timeout_s: float | None = None,
    ) -> tuple[int, Mapping[str, str], Any]:
        if self._session is None:
            raise RuntimeError("use ConsulClient in `async with`")
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        try:
            async with self._session.request(
                method,
                self.url + path,
                params=params,
                json=None if body is None else dict(body),
                timeout=timeout,
            ) as response:
                text = (await response.read()).decode("utf-8", "replace")
                status, headers = response.status, dict(response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ConsulError(f"cannot reach Consul at {self.url}: {_reason(exc)}") from None
        if status >= 400 and not (status == 404 and allow_404):
            lines = text.strip().splitlines()
            first_line = one_line(lines[0], 200) if lines else "no details"
            message = f"Consul at {self.url} answered {status} to {method} {path}: {first_line}"
            raise ConsulError(message, status)
        if "json" not in headers.get("Content-Type", "") or not text:
            return status, headers, text
        try:
            return status, headers, json.loads(text)
        except ValueError:
            raise ConsulError(f"Consul at {self.url} answered {path} with bad JSON") from None

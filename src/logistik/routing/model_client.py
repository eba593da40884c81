"""Calls models over HTTP and classifies their answers by the README's answer table."""

from __future__ import annotations

import time

import aiohttp
import orjson
from yarl import URL

from logistik.answer import Answer, Outcome
from logistik.handler import Handler
from logistik.routing.backoff import parse_retry_after

MAX_ERROR_TEXT = 300
MODEL_HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "logistik",
    "Accept-Encoding": "identity",
}


_RETRY_4XX = frozenset({408, 425, 429})


class ModelClient:
    """One pooled aiohttp session for every model call."""

    def __init__(self, max_connections: int = 0) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._urls: dict[str, URL] = {}  # parsed once per handler address, not per call

    async def __aenter__(self) -> ModelClient:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # `identity` is set rather than the header skipped: aiohttp's skip list costs a
            # header-dict copy on every request.
            headers=MODEL_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),  # models get no cookies: skip the jar's filter
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self, handler: Handler, body: bytes, timeout_s: float, headers: dict[str, str] | None = None
    ) -> Answer:
        """Send one event to one handler and classify the answer; never raises for model faults."""
        assert self._session is not None, "ModelClient used outside 'async with'"
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(total=timeout_s)
        url = self._urls.get(handler.url)
        if url is None:
            url = self._urls[handler.url] = URL(handler.url)
        started = time.perf_counter()
        try:
            async with self._session.request(
                handler.method,
                url,
                data=body,
                timeout=timeout,
                allow_redirects=False,
                headers=headers,
            ) as response:
                payload = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            return Answer(
                Outcome.RETRY,
                None,
                error=f"timeout after {timeout_s:g} s",
                latency_s=time.perf_counter() - started,
                timed_out=True,
            )
        except aiohttp.ClientError as exc:
            return Answer(
                Outcome.RETRY,
                None,
                error=describe_error(exc),
                latency_s=time.perf_counter() - started,
            )
        latency_s = time.perf_counter() - started
        return classify(status, payload, retry_after, latency_s)


def classify(status: int, payload: bytes, retry_after: str | None, latency_s: float) -> Answer:
    """Turn an HTTP status and body into an Answer."""
    if status == 204:
        return Answer(Outcome.IGNORED, status, latency_s=latency_s)
    if status == 422:
        return Answer(Outcome.DUPLICATE, status, latency_s=latency_s)
    if 200 <= status < 300:
        return _ok_body(status, payload, latency_s)
    if status >= 500 or status in _RETRY_4XX:
        return Answer(
            Outcome.RETRY,
            status,
            error=_http_error(status, payload),
            retry_after_s=parse_retry_after(retry_after),
            latency_s=latency_s,
        )
    return Answer(Outcome.REJECTED, status, error=_http_error(status, payload), latency_s=latency_s)


def _ok_body(status: int, payload: bytes, latency_s: float) -> Answer:
    if not payload.strip():
        return Answer(Outcome.IGNORED, status, latency_s=latency_s)
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Answer(
            Outcome.RETRY,
            status,
            error=f"HTTP {status} with a body that is not JSON: {exc}",
            latency_s=latency_s,
        )
    # Models written for the first logistik answer `[response, code]`; the response is published.
    if isinstance(parsed, list) and len(parsed) == 2 and isinstance(parsed[1], int):
        payload = orjson.dumps(parsed[0])
    return Answer(Outcome.OK, status, body=payload, latency_s=latency_s)


def _http_error(status: int, payload: bytes) -> str:
    text = payload[:MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def describe_error(exc: aiohttp.ClientError) -> str:
    """A failed call in one line."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the model closed the connection without answering"
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT]

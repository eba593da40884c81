"""Calls models over HTTP and classifies their answers by the README's answer table."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar, cast

import aiohttp
import orjson

from logistik.answer import Answer, Outcome
from logistik.errors import ModelCallError
from logistik.event import elements, first_element
from logistik.handler import Handler
from logistik.routing.backoff import parse_retry_after
from logistik.routing.batching import Batcher
from logistik.routing.http_pool import MAX_ERROR_TEXT, HttpPool, Reply

T = TypeVar("T")

MODEL_HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "logistik",
    "Accept-Encoding": "identity",
}


_RETRY_4XX = frozenset({408, 425, 429})
BATCH_ANSWER_MAX_BYTES = 64 * 1024 * 1024  # a whole batch's answer, read into memory at once
BATCH_ENVELOPE = b'"logistik"'  # an item holding it may be a status rather than an answer


class ModelClient:
    """Every model call of the process, on one pool of keep-alive connections."""

    def __init__(self, max_connections: int = 0, max_answer_bytes: int = 1024 * 1024) -> None:
        self._max_connections = max_connections
        self._max_answer_bytes = max_answer_bytes
        self._pool: HttpPool | None = None
        self._batcher = Batcher(self.call_batch)
        self._read_one = partial(_one, max_answer_bytes)

    async def __aenter__(self) -> ModelClient:
        self._pool = HttpPool(self._max_connections, MODEL_HEADERS)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._batcher.close()
        if self._pool is not None:
            self._pool.close()

    def call(
        self, handler: Handler, body: bytes, timeout_s: float, headers: dict[str, str] | None = None
    ) -> Coroutine[Any, Any, Answer]:
        """Send one event to one handler and classify the answer; never raises for model faults.

        A handler that takes batches gets the event in a list with others (see Batcher).
        """
        if handler.batch_size > 1:
            return self._batcher.call(handler, body, timeout_s, headers)
        # The coroutine of the exchange itself is handed back: one fewer to pass through on
        # the way to each answer.
        limit = self._max_answer_bytes
        return self._exchange(handler, body, timeout_s, headers, limit, self._read_one)

    async def call_batch(
        self,
        handler: Handler,
        bodies: list[bytes],
        timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> list[Answer]:
        """Send events as one JSON list and classify each item of the list answered."""
        body = b"[" + b",".join(bodies) + b"]"
        # Each event's answer may be as large as one alone, up to a bound on the whole list.
        limit = min(self._max_answer_bytes * len(bodies), BATCH_ANSWER_MAX_BYTES)
        read = partial(_batch, limit, len(bodies), self._max_answer_bytes)
        answers = await self._exchange(handler, body, timeout_s, headers, limit, read)
        return answers.shared_by(len(bodies)) if isinstance(answers, Answer) else answers

    async def _exchange(
        self,
        handler: Handler,
        body: bytes,
        timeout_s: float,
        headers: dict[str, str] | None,
        limit: int,
        read: Callable[[Reply, float], T],
    ) -> T | Answer:
        """One HTTP request, its reply read by `read` (with its latency); an Answer to retry
        when no answer came."""
        assert self._pool is not None, "ModelClient used outside 'async with'"
        started = time.perf_counter()
        try:
            reply = await self._pool.request(
                handler.method, handler.url, body, timeout_s, limit, headers
            )
        except ModelCallError as exc:
            latency_s = time.perf_counter() - started
            return Answer(
                Outcome.RETRY, None, error=str(exc), latency_s=latency_s, timed_out=exc.timed_out
            )
        return read(reply, time.perf_counter() - started)


def _one(limit: int, reply: Reply, latency_s: float) -> Answer:
    """The answer to one event, from the model's reply."""
    if reply.body is None:
        return too_large(reply.status, reply.retry_after, latency_s, limit)
    return classify(reply.status, reply.body, reply.retry_after, latency_s)


def _batch(limit: int, size: int, item_limit: int, reply: Reply, latency_s: float) -> list[Answer]:
    """The answers to a batch of `size` events, from the model's reply."""
    if reply.body is None:
        return too_large(reply.status, reply.retry_after, latency_s, limit).shared_by(size)
    return classify_batch(reply.status, reply.body, reply.retry_after, latency_s, size, item_limit)


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """A response's whole body, None when it is longer than `limit` bytes (read no further)."""
    length = response.content_length
    if length is not None:
        return None if length > limit else await response.read()
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def too_large(status: int, retry_after: str | None, latency_s: float, limit: int) -> Answer:
    """An answer whose body is over the limit: rejected when it succeeded, else per its status.

    A model answers the same event with about the same size again, so a retry would only
    read the same body again: the event goes to the failed topic, to be replayed once the
    limit is raised.
    """
    if 200 <= status < 300:
        return Answer(
            Outcome.REJECTED,
            status,
            error=f"HTTP {status} with a body over {limit} bytes (routing.max_answer_bytes)",
            latency_s=latency_s,
        )
    return classify(status, f"a body over {limit} bytes".encode(), retry_after, latency_s)


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


def classify_batch(
    status: int,
    payload: bytes,
    retry_after: str | None,
    latency_s: float,
    count: int,
    max_item_bytes: int,
) -> list[Answer]:
    """One Answer per event of a batch: by the request's status, then by each item answered.

    An HTTP status other than 200-203 says the same of every event. A 200 answers a JSON list
    as long as the batch: each item is published, `null` ignores its event, and an item
    `{"logistik": {"status": N, "error": "...", "retry_after_s": S}}` classifies its event by
    the answer table as if it had been answered alone with status N.
    """
    if not 200 <= status < 300 or status == 204 or not payload.strip():
        return classify(status, payload, retry_after, latency_s).shared_by(count)
    try:
        items = elements(payload)
    except (ValueError, RecursionError) as exc:
        error = f"HTTP {status} with a body that is not a JSON list: {exc}"[:MAX_ERROR_TEXT]
        return Answer(Outcome.RETRY, status, error=error, latency_s=latency_s).shared_by(count)
    if len(items) != count:
        error = f"HTTP {status} with {len(items)} item(s) for a batch of {count} event(s)"
        return Answer(Outcome.RETRY, status, error=error, latency_s=latency_s).shared_by(count)
    return [_item(status, item, latency_s, max_item_bytes) for item in items]


def _item(status: int, item: bytes, latency_s: float, max_item_bytes: int) -> Answer:
    """The Answer one item of a batch's list gives its event."""
    if item == b"null":
        return Answer(Outcome.IGNORED, status, latency_s=latency_s)
    if item.startswith(b"{") and BATCH_ENVELOPE in item:
        envelope = _envelope(item)
        if envelope is not None:
            return _enveloped(status, envelope, latency_s)
    if len(item) > max_item_bytes:
        return too_large(status, None, latency_s, max_item_bytes)
    return Answer(Outcome.OK, status, body=item, latency_s=latency_s)


def _envelope(item: bytes) -> dict[str, Any] | None:
    """The `logistik` object of an item that is only that, else None (the item is an answer)."""
    try:
        parsed = orjson.loads(item)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict) and len(parsed) == 1 and isinstance(parsed.get("logistik"), dict):
        return cast(dict[str, Any], parsed["logistik"])
    return None


def _enveloped(status: int, envelope: dict[str, Any], latency_s: float) -> Answer:
    item_status = envelope.get("status")
    if isinstance(item_status, bool) or not isinstance(item_status, int):
        error = f"HTTP {status} with an item whose logistik.status is not an HTTP status"
        return Answer(Outcome.RETRY, status, error=error, latency_s=latency_s)
    if not 100 <= item_status <= 599:
        error = f"HTTP {status} with an item whose logistik.status is {item_status}"
        return Answer(Outcome.RETRY, status, error=error, latency_s=latency_s)
    text = envelope.get("error")
    message = text.encode() if isinstance(text, str) else b""
    if 200 <= item_status < 300:
        message = b""  # a success without an answer ignores the event
    answer = classify(item_status, message, None, latency_s)
    wait_s = envelope.get("retry_after_s")
    if (
        answer.outcome is Outcome.RETRY
        and isinstance(wait_s, int | float)
        and not isinstance(wait_s, bool)
        and math.isfinite(wait_s)
        and wait_s >= 0
    ):
        answer.retry_after_s = float(wait_s)
    return answer


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
        payload = first_element(payload)  # the model's own bytes: its numbers stay exact
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

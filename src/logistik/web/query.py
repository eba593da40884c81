"""The query page's test call: one event sent to one registered handler, never to Kafka."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson

from logistik.event import Event, decode_event, encode_event
from logistik.handler import Handler
from logistik.routing.model_client import classify, describe_error, read_at_most


def as_routed(event: dict[str, Any]) -> Event:
    """The event as the router sends it (id, published added); InvalidEventError if unroutable."""
    return decode_event(encode_event(event))


def parse_body(payload: bytes) -> Any:
    """A model's answer as JSON when it is, else as text; None when empty."""
    if not payload.strip():
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload.decode("utf-8", "replace")


async def query(handler: Handler, event: Event, timeout_s: float, max_bytes: int) -> dict[str, Any]:
    """Send an event to a handler's own address, method and path; its answer classified."""
    result: dict[str, Any] = {
        "node_id": handler.node_id,
        "url": handler.url,
        "status": None,
        "outcome": "error",
        "latency_ms": 0.0,
        "body": None,
        "error": None,
    }
    started = time.perf_counter()
    try:
        async with (
            aiohttp.ClientSession(
                headers={"Content-Type": "application/json", "User-Agent": "logistik"},
                skip_auto_headers=("Accept-Encoding",),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as session,
            session.request(
                handler.method, handler.url, data=encode_event(event), allow_redirects=False
            ) as response,
        ):
            result["status"] = response.status
            payload = await read_at_most(response, max_bytes)
            retry_after = response.headers.get("Retry-After")
    except TimeoutError:
        latency = time.perf_counter() - started
        return {
            **result,
            "outcome": "timeout",
            "latency_ms": latency * 1000,
            "error": f"timeout after {timeout_s:g} s (web.query_timeout_s)",
        }
    except aiohttp.ClientError as exc:
        latency = time.perf_counter() - started
        return {**result, "latency_ms": latency * 1000, "error": describe_error(exc)}
    latency = time.perf_counter() - started
    result["latency_ms"] = latency * 1000
    if payload is None:
        return {
            **result,
            "error": f"the answer is larger than {max_bytes} bytes (web.query_max_bytes)",
        }
    answer = classify(result["status"], payload, retry_after, latency)
    return {
        **result,
        "outcome": answer.kind,
        "body": parse_body(payload),
        "error": answer.error or None,
    }

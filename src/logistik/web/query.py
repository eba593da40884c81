"""The query page's test call: one event sent to one registered handler, never to Kafka."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from logistik.config import KafkaConfig
from logistik.errors import BrokerError, InvalidEventError
from logistik.event import Event, decode_event, encode_event
from logistik.handler import Handler
from logistik.kafka import command_consumer_config, record_time, topic_partitions
from logistik.routing.model_client import classify, describe_error, read_at_most

SAMPLE_MAX_BYTES = 256_000  # a larger event is not offered as the query page's example


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


def latest_event(kafka: KafkaConfig, topic: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The newest record of a topic that is an event, with where it was; None when none is.

    Reads the last record of each partition without a consumer group (nothing is committed).
    """
    consumer = Consumer(command_consumer_config(kafka, f"logistik-query-{uuid.uuid4().hex[:8]}"))
    try:
        partitions = topic_partitions(consumer, kafka.bootstrap_servers, topic, timeout_s)
        last = []
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s
            )
            if high > low:
                last.append(TopicPartition(topic, partition, high - 1))
        consumer.assign(last)
        newest: dict[str, Any] | None = None
        newest_at = datetime.min.replace(tzinfo=UTC)
        waiting = {tp.partition for tp in last}
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is None or message.error() is not None:
                continue
            waiting.discard(message.partition())
            found = _sample(message.value())
            at = record_time(message) or newest_at
            if found is not None and (newest is None or at > newest_at):
                newest_at, newest = (
                    at,
                    {
                        "event": found,
                        "source": f"{topic}/{message.partition()}/{message.offset()}",
                        "at": at.isoformat(),
                    },
                )
        return newest
    except (KafkaException, BrokerError):
        return None
    finally:
        consumer.close()


def _sample(value: bytes | None) -> Event | None:
    """A record's event as the query page offers it, None when it is not one or too large."""
    if value is None or len(value) > SAMPLE_MAX_BYTES:
        return None
    try:
        return decode_event(value)
    except InvalidEventError:
        return None

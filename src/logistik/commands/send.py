"""`logistik send`: validate JSON lines and produce them to a topic."""

from __future__ import annotations

from typing import IO

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from logistik.errors import InvalidEventError, LogistikError, PublishError
from logistik.event import decode_event, encode_event
from logistik.kafka.clients import base_config


def read_events(stream: IO[bytes], name: str) -> list[bytes]:
    """Every non-blank line as an event; the first bad line stops everything, naming the line."""
    events = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            events.append(encode_event(decode_event(line.strip())))
        except InvalidEventError as exc:
            raise LogistikError(f"{name}:{number}: {exc}; nothing was sent") from None
    return events


def send_events(
    bootstrap_servers: str, topic: str, events: list[bytes], timeout_s: float = 30.0
) -> int:
    """Produce events, keyed by actor id, and wait for every acknowledgement."""
    producer = Producer(
        {
            **base_config(bootstrap_servers),
            "enable.idempotence": True,
            "message.timeout.ms": int(timeout_s * 1000),
        }
    )
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    for value in events:
        actor = orjson.loads(value).get("actor")
        key = str(actor["id"]).encode() if isinstance(actor, dict) and "id" in actor else None
        try:
            producer.produce(topic, value, key, on_delivery=delivered)
        except KafkaException as exc:
            raise PublishError(f"cannot write to {topic}: {exc.args[0]}") from None
        producer.poll(0)
    left = producer.flush(timeout_s + 5)
    timed_out = sum(1 for e in errors if e.code() == KafkaError._MSG_TIMED_OUT)
    if left or timed_out:
        raise PublishError(
            f"{left + timed_out} event(s) not acknowledged by {bootstrap_servers} within "
            f"{timeout_s:g} s (is the broker running?)"
        )
    if errors:
        raise PublishError(f"{len(errors)} event(s) not written to {topic}: {errors[0].str()}")
    return len(events)

"""`logistik send`: validate JSON lines and produce them to a topic."""

from __future__ import annotations

from typing import IO

import click
from confluent_kafka import KafkaError, Message, Producer

from logistik.commands.console import EXIT_ERROR, fail, kafka_settings
from logistik.config import KafkaConfig
from logistik.errors import InvalidEventError, LogistikError, PublishError
from logistik.event import actor_key, decode_record
from logistik.kafka import produce, producer_config

Record = tuple[bytes, bytes | None]  # an event's bytes, and its key


def read_events(stream: IO[bytes], name: str) -> list[Record]:
    """Every non-blank line as an event keyed by its actor; the first bad line stops everything."""
    records = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            event, body = decode_record(line.strip())
        except InvalidEventError as exc:
            raise LogistikError(f"{name}:{number}: {exc}; nothing was sent") from None
        records.append((body, actor_key(event)))
    return records


def send_events(kafka: KafkaConfig, topic: str, records: list[Record], timeout_s: float) -> int:
    """Produce events and wait for every acknowledgement."""
    producer = Producer(producer_config(kafka, ack_timeout_s=timeout_s))
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for value, key in records:
        produce(producer, topic, value, key, on_delivery=delivered)
    left = producer.flush(timeout_s + 5)
    timed_out = sum(1 for e in errors if e.code() == KafkaError._MSG_TIMED_OUT)
    if left or timed_out:
        raise PublishError(
            f"{left + timed_out} event(s) not acknowledged by {kafka.bootstrap_servers} within "
            f"{timeout_s:g} s (is the broker running?)"
        )
    if errors:
        raise PublishError(f"{len(errors)} event(s) not written to {topic}: {errors[0].str()}")
    return len(records)


@click.command()
@click.argument("topic")
@click.argument("source", type=click.Path(allow_dash=True, dir_okay=False), default="-")
@click.option("--config", "config_file", metavar="FILE", help="YAML config for the broker.")
@click.option("--bootstrap-servers", help="Overrides kafka.bootstrap_servers.")
@click.option(
    "--timeout-s",
    type=float,
    default=30.0,
    show_default=True,
    help="How long to wait for the broker to acknowledge every event.",
)
def send(
    topic: str,
    source: str,
    config_file: str | None,
    bootstrap_servers: str | None,
    timeout_s: float,
) -> None:
    """Produce events (JSON lines) from FILE or stdin to TOPIC; every line is checked first.

    \b
    Example:
      echo '{"verb": "detect", "actor": {"id": "u1"}}' | logistik send event-v2-detect
    """
    kafka = kafka_settings(config_file, bootstrap_servers)
    try:
        with click.open_file(source, "rb") as stream:
            records = read_events(stream, "stdin" if source == "-" else source)
        count = send_events(kafka, topic, records, timeout_s)
    except LogistikError as exc:
        fail(str(exc), EXIT_ERROR)
    click.echo(f"sent {count} event(s) to {topic}", err=True)

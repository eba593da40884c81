"""`logistik send`: validate JSON lines and produce them to a topic."""

from __future__ import annotations

import urllib.request
from typing import IO

import click
import orjson
from confluent_kafka import KafkaError, Message, Producer

from logistik.commands.console import (
    EXIT_ERROR,
    config_given,
    fail,
    kafka_settings,
    required_config,
)
from logistik.config import KafkaConfig, config_path
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
    warning = unread_warning(config_file, topic)
    if warning:
        click.echo(f"logistik: warning: {warning}", err=True)


def unread_warning(config_file: str | None, topic: str) -> str | None:
    """Why no model may get events sent to `topic`, when the router or the config says so.

    Only with a config: its web section names the logistik that reads its broker.
    """
    if not config_given(config_file):
        return None
    config = required_config(config_file)
    web = config.web
    host = "127.0.0.1" if web.host in ("0.0.0.0", "::", "") else web.host
    url = f"http://{host}:{web.port}"
    routed = routed_topics(url)
    if routed is not None:
        if topic in routed:
            return None
        reads = ", ".join(sorted(routed)) or "nothing yet"
        return f"the logistik at {url} routes no handler on {topic} (it reads: {reads})"
    if config.discovery.consul is not None or any(
        h.event == topic for h in config.discovery.handlers
    ):
        return None
    return (
        f"no handler of {config_path(config_file)} reads {topic}, and no logistik answered at "
        f"{url}; the events wait on the topic"
    )


def routed_topics(base_url: str, timeout_s: float = 2.0) -> set[str] | None:
    """The topics a running logistik routes, None when it cannot be asked."""
    try:
        url = f"{base_url}/api/handlers?state=active"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            handlers = orjson.loads(response.read())
        return {str(h["event"]) for h in handlers if h.get("event")}
    except (OSError, ValueError, TypeError, KeyError):
        return None

"""`logistik tail`: follow a topic and print each record, pretty or as JSON lines."""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any

import click
import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from rich.console import Console
from rich.json import JSON
from rich.text import Text

from logistik.commands.console import fail, kafka_settings
from logistik.config import KafkaConfig
from logistik.errors import BrokerError, LogistikError
from logistik.kafka import command_consumer_config, header_pairs, record_time, topic_partitions
from logistik.protocol import HEADER_PREFIX

POLL_S = 0.2
# Shown first and highlighted; every other logistik.* header follows on one line.
PROBLEM_HEADERS = ("reason", "error")


def text_of(data: bytes | str | None) -> str | None:
    """Bytes as text, undecodable bytes escaped."""
    if data is None or isinstance(data, str):
        return data
    return data.decode("utf-8", "backslashreplace")


def escaped(text: str) -> str:
    """Text with control characters escaped, so raw bytes print on one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def headers_of(message: Message) -> dict[str, str]:
    """A record's headers as text (the last value of a repeated name wins)."""
    return {name: text_of(value) or "" for name, value in header_pairs(message)}


def timestamp_of(message: Message) -> str | None:
    """A record's timestamp as ISO 8601 UTC, None when it has none."""
    at = record_time(message)
    return None if at is None else at.isoformat(timespec="milliseconds")


def parsed_value(value: bytes | None) -> tuple[str, Any]:
    """('json', the parsed value), ('text', the escaped bytes) or ('none', None)."""
    if value is None:
        return "none", None
    try:
        return "json", orjson.loads(value)
    except orjson.JSONDecodeError:
        return "text", text_of(value)


def as_json_line(message: Message) -> bytes:
    """One record as a JSON object on one line."""
    value_format, value = parsed_value(message.value())
    return orjson.dumps(
        {
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp": timestamp_of(message),
            "key": text_of(message.key()),
            "headers": headers_of(message),
            "value": value,
            "value_format": value_format,
        }
    )


def header_lines(headers: dict[str, str]) -> list[Text]:
    """logistik.* headers compactly (a failure's reason and error highlighted), then others."""
    ours = {
        k.removeprefix(HEADER_PREFIX): v for k, v in headers.items() if k.startswith(HEADER_PREFIX)
    }
    lines = []
    if "reason" in ours or "error" in ours:
        line = Text("failed ", style="bold red")
        line.append(ours.get("reason", "?"), style="bold red reverse")
        line.append(f"  {ours.get('error', '')}", style="red")
        lines.append(line)
    rest = [f"{k}={v}" for k, v in ours.items() if k not in PROBLEM_HEADERS]
    if rest:
        lines.append(Text("logistik  " + "  ".join(rest), style="cyan"))
    others = [f"{k}={escaped(v)}" for k, v in headers.items() if not k.startswith(HEADER_PREFIX)]
    if others:
        lines.append(Text("headers  " + "  ".join(others), style="dim"))
    return lines


def print_pretty(console: Console, message: Message) -> None:
    """One record: where and when, key, headers, and its value as coloured JSON or raw bytes."""
    title = Text(f"{message.topic()}[{message.partition()}]@{message.offset()}", style="bold")
    title.append(f"  {timestamp_of(message) or 'no time'}", style="green")
    key = text_of(message.key())
    title.append(f"  key={escaped(key)}" if key is not None else "  no key", style="yellow")
    console.print(title)
    for line in header_lines(headers_of(message)):
        console.print(line)
    value_format, value = parsed_value(message.value())
    if value_format == "json":
        console.print(JSON.from_data(value))
    elif value_format == "text":
        size = len(message.value() or b"")
        console.print(Text(f"(not JSON, {size} bytes) ", style="magenta") + Text(escaped(value)))
    else:
        console.print(Text("(no value)", style="magenta"))
    console.print()


def start_consumer(kafka: KafkaConfig, topic: str, from_beginning: bool) -> Consumer:
    """A consumer assigned to every partition of the topic, at its beginning or end."""
    try:
        consumer = Consumer(command_consumer_config(kafka, f"logistik-tail-{uuid.uuid4().hex[:8]}"))
    except KafkaException as exc:
        raise BrokerError(f"cannot set up the Kafka consumer: {exc.args[0].str()}") from None
    try:
        partitions = topic_partitions(consumer, kafka.bootstrap_servers, topic)
    except BrokerError:
        consumer.close()
        raise
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in partitions])
    return consumer


class OlderRecords:
    """Tells the records written before the tail started, at the start of each partition.

    Asked for new records only, the tail starts at each partition's end as the broker reports
    it. Tansu reports the offset after the first record of the partition's last batch, so the
    rest of that batch (written before the tail started) would be printed as new: until a
    partition yields a newer record, its records timestamped before the start are skipped.
    """

    def __init__(self, since_ms: int) -> None:
        self._since_ms = since_ms
        self._caught_up: set[tuple[str | None, int | None]] = set()

    def older(self, message: Message) -> bool:
        """Whether the record is one of those written before the start."""
        where = (message.topic(), message.partition())
        if where in self._caught_up:
            return False
        at = record_time(message)
        if at is not None and at.timestamp() * 1000 < self._since_ms:
            return True
        self._caught_up.add(where)
        return False


def follow(
    consumer: Consumer, count: int | None, as_json: bool, older: OlderRecords | None = None
) -> None:
    """Print records as they come, until `count` records were printed."""
    console = Console(highlight=False, soft_wrap=True)
    printed = 0
    reported: set[int] = set()
    while count is None or printed < count:
        message = consumer.poll(POLL_S)
        if message is None:
            continue
        error = message.error()
        if error is not None:
            report_error(error, reported)
            continue
        if older is not None and older.older(message):
            continue
        if as_json:
            sys.stdout.buffer.write(as_json_line(message) + b"\n")
            sys.stdout.buffer.flush()
        else:
            print_pretty(console, message)
        printed += 1


def report_error(error: KafkaError, reported: set[int]) -> None:
    """A fatal error stops; any other is said once on stderr while librdkafka retries."""
    if error.fatal():
        raise BrokerError(f"Kafka: {error.str()}")
    if error.code() not in reported and error.code() != KafkaError._PARTITION_EOF:
        reported.add(error.code())
        click.echo(f"logistik: warning: Kafka: {error.str()}", err=True)


@click.command()
@click.argument("topic")
@click.option(
    "--from-beginning", is_flag=True, help="Start at the oldest record (default: new ones)."
)
@click.option(
    "-n", "--count", type=click.IntRange(min=1), metavar="N", help="Stop after N records."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line (topic, partition, offset, timestamp, key, "
    "headers, value, value_format), for scripts.",
)
@click.option("--config", "config_file", metavar="FILE", help="YAML config for the broker.")
@click.option("--bootstrap-servers", help="Overrides kafka.bootstrap_servers.")
def tail(
    topic: str,
    from_beginning: bool,
    count: int | None,
    as_json: bool,
    config_file: str | None,
    bootstrap_servers: str | None,
) -> None:
    """Follow TOPIC and print each record: time, partition/offset, key, headers and value.

    Reads every partition without a consumer group: nothing is committed and the routers'
    groups are untouched. A failed record's reason and error are highlighted. Ctrl-C stops.

    \b
    Examples:
      logistik tail events-failed --from-beginning
      logistik tail events-results -n 10 --json | jq .value
    """
    kafka = kafka_settings(config_file, bootstrap_servers)
    older = None if from_beginning else OlderRecords(int(time.time() * 1000))
    try:
        consumer = start_consumer(kafka, topic, from_beginning)
    except LogistikError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return
    try:
        follow(consumer, count, as_json, older)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except LogistikError as exc:
        fail(str(exc))
    finally:
        consumer.close()


if __name__ == "__main__":
    tail()

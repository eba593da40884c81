"""The benchmark's answer reader, run by bench/benchmark.py as a process of its own.

    python bench/reader.py --servers HOST:PORT --topics A,B --failed F --partitions P --out FILE

Reads every partition of the answer topics and of the failed topic from the beginning, and
keeps for each answer the time it was read, by topic and event id (the model's answer carries
the event's id, whichever router published it). While it runs it prints a JSON line whenever
its counts change (at most every PROGRESS_S): answers per topic and id prefix, failed records,
duplicates, the last failure's reason. When its standard input closes it writes
`{topic: {event id: read time}}` to `--out` and exits.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from benchkit import split_event_id
from logistik.protocol import Header

BATCH = 500
POLL_S = 0.05
PROGRESS_S = 0.05


class Reader:
    """Counts and times answers; `failed` and `last_failure` for what went to the failed topic."""

    def __init__(self, topics: Sequence[str], failed: str) -> None:
        self.answers: dict[str, dict[str, float]] = {topic: {} for topic in topics}
        self.counts: dict[str, Counter[str]] = {topic: Counter() for topic in topics}
        self._failed_topic = failed
        self.failed = 0
        self.duplicates = 0
        self.last_failure = ""

    def record(self, message: Message, read_at: float) -> None:
        """Keep the first answer to each event, count the rest as duplicates."""
        topic = message.topic() or ""
        if topic == self._failed_topic:
            headers = dict(message.headers() or [])
            self.failed += 1
            self.last_failure = " ".join(
                _text(headers.get(name)) for name in (Header.REASON, Header.ERROR)
            )
            return
        try:
            ident = str(orjson.loads(message.value() or b"{}")["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            ident = "?"
        answers = self.answers[topic]
        if ident in answers:
            self.duplicates += 1
            return
        answers[ident] = read_at
        parts = split_event_id(ident)
        self.counts[topic][parts[0] if parts else "?"] += 1

    def progress(self) -> bytes:
        """The counts as one JSON line."""
        return orjson.dumps(
            {
                "counts": self.counts,
                "failed": self.failed,
                "duplicates": self.duplicates,
                "last_failure": self.last_failure,
            }
        )


def _text(value: str | bytes | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def read(args: argparse.Namespace, stop: threading.Event) -> Reader:
    """Read until `stop` is set."""
    topics = [t for t in args.topics.split(",") if t]
    reader = Reader(topics, args.failed)
    consumer = Consumer(
        {
            "bootstrap.servers": args.servers,
            "group.id": "bench-reader",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "log_level": 4,
        }
    )
    consumer.assign(
        [
            TopicPartition(topic, partition, OFFSET_BEGINNING)
            for topic in [*topics, args.failed]
            for partition in range(args.partitions)
        ]
    )
    shown, shown_at = b"", 0.0
    while not stop.is_set():
        # poll() returns as soon as one record is there; consume(BATCH, POLL_S) would wait out
        # its timeout for a full batch and add up to POLL_S to every latency measured.
        first = consumer.poll(POLL_S)
        read_at = time.time()
        if first is not None and first.error() is None:
            reader.record(first, read_at)
        if first is not None:
            messages = consumer.consume(BATCH, 0)  # what has arrived with it, without waiting
            read_at = time.time()
            for message in messages:
                if message.error() is None:
                    reader.record(message, read_at)
        now = time.monotonic()
        if now - shown_at >= PROGRESS_S:
            line = reader.progress()
            if line != shown:
                sys.stdout.buffer.write(line + b"\n")
                sys.stdout.flush()
                shown, shown_at = line, now
    consumer.close()
    return reader


def main() -> None:
    """Read answers until standard input closes, then write them out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--servers", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated answer topics")
    parser.add_argument("--failed", required=True, help="the failed topic")
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    reader = read(args, stop)
    Path(args.out).write_bytes(orjson.dumps(reader.answers))


if __name__ == "__main__":
    main()

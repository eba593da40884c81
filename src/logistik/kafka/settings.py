"""librdkafka settings of every logistik client, and where librdkafka's log lines go."""

from __future__ import annotations

import logging
import re
import socket
import time
from typing import Any

from logistik.config import KafkaConfig

_TIMINGS = re.compile(r"\(after \d+ms[^)]*\)|\d+ms")


class LibrdkafkaLog:
    """Receives librdkafka's log lines, capped at WARNING, each distinct line once per interval.

    librdkafka repeats a failed connection every few milliseconds while a broker is away;
    logistik reports what that means for events itself, so the repetition is only noise.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        self._logger = logging.getLogger("logistik.librdkafka")
        self._interval_s = interval_s
        self._last: dict[str, float] = {}

    def log(self, level: int, message: str, *args: object) -> None:
        """Log one librdkafka line unless the same line was logged within the interval."""
        text = message % args if args else message
        key = _TIMINGS.sub("", text)
        now = time.monotonic()
        if now - self._last.get(key, -self._interval_s) < self._interval_s:
            return
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        self._logger.log(min(level, logging.WARNING), "%s", text)


class QuietLog:
    """Swallows librdkafka's log lines, for commands that report what they mean in one line."""

    def log(self, level: int, message: str, *args: object) -> None:
        """Drop one librdkafka line."""


def base_config(servers: str, quiet: bool = False) -> dict[str, Any]:
    """Settings every client shares; `quiet` drops librdkafka's log lines."""
    return {
        "bootstrap.servers": servers,
        "client.id": "logistik",
        "logger": QuietLog() if quiet else LibrdkafkaLog(),
    }


def consumer_config(kafka: KafkaConfig) -> dict[str, Any]:
    """The router's consumer settings: manual commits, low fetch wait, the configured group."""
    return {
        **base_config(kafka.bootstrap_servers),
        "group.id": kafka.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        "session.timeout.ms": kafka.session_timeout_ms,
        "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
        "topic.metadata.refresh.interval.ms": 10_000,
        # Adding or removing a topic moves only its partitions, not every partition.
        "partition.assignment.strategy": "cooperative-sticky",
        **static_membership(kafka),
        **kafka.consumer,
    }


# Tansu answers a JoinGroup only after half the member's session timeout (rounded up to a
# second): on the embedded broker, whose members run beside it on this machine, a short
# session has the router routing 2 s after it subscribes rather than 5.
EMBEDDED_SESSION_TIMEOUT_MS = 3000
EMBEDDED_HEARTBEAT_MS = 1000


def embedded_session(kafka: KafkaConfig) -> KafkaConfig:
    """The settings for the embedded broker: a short session unless the config sets one."""
    if "session_timeout_ms" in kafka.model_fields_set:
        return kafka
    consumer = {"heartbeat.interval.ms": EMBEDDED_HEARTBEAT_MS, **kafka.consumer}
    return kafka.model_copy(
        update={"session_timeout_ms": EMBEDDED_SESSION_TIMEOUT_MS, "consumer": consumer}
    )


def retry_group(group_id: str) -> str:
    """The consumer group that reads the retry topics of the routers of `group_id`."""
    return f"{group_id}-retries"


def retry_consumer_config(kafka: KafkaConfig) -> dict[str, Any]:
    """The consumer of retry topics: a group of its own, and never a start at a topic's end."""
    return {
        **consumer_config(kafka),
        "group.id": retry_group(kafka.group_id),
        "auto.offset.reset": "earliest",
    }


def static_membership(kafka: KafkaConfig) -> dict[str, Any]:
    """`group.instance.id` when `kafka.group_instance_id` is set ("{hostname}" filled in)."""
    if not kafka.group_instance_id:
        return {}
    instance = kafka.group_instance_id.replace("{hostname}", socket.gethostname())
    return {"group.instance.id": instance}


def command_consumer_config(kafka: KafkaConfig, group_id: str, **settings: Any) -> dict[str, Any]:
    """A command's consumer: quiet, commits only what it commits itself, then `settings`."""
    return {
        **base_config(kafka.bootstrap_servers, quiet=True),
        **kafka.consumer,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "fetch.wait.max.ms": 100,
        **settings,
    }


def producer_config(
    kafka: KafkaConfig, ack_timeout_s: float | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Producer settings: idempotent, acknowledged by all replicas, short linger for batching,
    batches compressed with lz4.

    `ack_timeout_s` bounds how long a record may wait for its acknowledgement (librdkafka's
    default is five minutes); `quiet` drops librdkafka's log lines.
    """
    config = {
        **base_config(kafka.bootstrap_servers, quiet),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        # Compressed on librdkafka's thread, not the event loop's: the broker writes and serves
        # a third of the bytes (a shed group's retry bundles above all), measured cheaper for
        # the broker and no dearer for the router.
        "compression.type": "lz4",
        # A record for a topic that does not exist fails after this long (librdkafka waits
        # 30 s), and later ones at once: its event holds its partition's commit point no longer.
        "topic.metadata.propagation.max.ms": 10_000,
        **kafka.producer,
    }
    if ack_timeout_s is not None:
        config["message.timeout.ms"] = int(ack_timeout_s * 1000)
    return config

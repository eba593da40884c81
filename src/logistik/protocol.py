"""Records written to a failed topic: the event as received, and why it failed, in headers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

HEADER_PREFIX = "logistik."


class Reason:
    """Machine-readable reasons a record lands on a failed topic."""

    EMPTY = "empty"
    NOT_UTF8 = "not-utf8"
    INVALID_JSON = "invalid-json"
    NOT_OBJECT = "not-object"
    MISSING_VERB = "missing-verb"
    REJECTED = "rejected"
    RETRIES_EXHAUSTED = "retries-exhausted"
    NO_HANDLER = "no-handler"
    PUBLISH_FAILED = "publish-failed"
    INTERNAL = "internal-error"


@dataclass(frozen=True)
class FailedRecord:
    """One (event, group) that could not be handled, or one record that is not an event."""

    topic: str  # where the event came from
    partition: int
    offset: int
    value: bytes | None  # the normalised event, or the raw bytes when it could not be decoded
    reason: str
    error: str
    event_id: str = ""
    group_id: str = ""
    failed_nodes: tuple[str, ...] = ()
    retries: int = 0
    replays: int = 0
    failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def headers(self) -> list[tuple[str, str | bytes | None]]:
        """Kafka headers that say why and where the record failed."""
        fields = {
            "reason": self.reason,
            "error": self.error,
            "topic": self.topic,
            "source": f"{self.topic}/{self.partition}/{self.offset}",
            "event_id": self.event_id,
            "group": self.group_id,
            "failed_nodes": ",".join(self.failed_nodes),
            "retries": str(self.retries),
            "replays": str(self.replays),
            "failed_at": self.failed_at.isoformat(timespec="milliseconds"),
        }
        return [(HEADER_PREFIX + k, v.encode()) for k, v in fields.items() if v]

    def summary(self, failed_topic: str) -> dict[str, Any]:
        """What the API shows of a failure (not the event itself)."""
        return {
            "at": self.failed_at.isoformat(timespec="milliseconds"),
            "topic": self.topic,
            "failed_topic": failed_topic,
            "source": f"{self.topic}/{self.partition}/{self.offset}",
            "event_id": self.event_id or None,
            "group": self.group_id or None,
            "reason": self.reason,
            "error": self.error,
            "nodes": list(self.failed_nodes),
            "retries": self.retries,
        }

    @classmethod
    def from_headers(cls, value: bytes | None, headers: list[tuple[str, bytes]]) -> FailedRecord:
        """Read a record of a failed topic back."""
        found = {
            k.removeprefix(HEADER_PREFIX): v.decode("utf-8", "replace")
            for k, v in headers
            if k.startswith(HEADER_PREFIX)
        }
        topic, partition, offset = (found.get("source", "") or "//").rsplit("/", 2)
        failed_at = found.get("failed_at")
        return cls(
            topic=found.get("topic", topic),
            partition=int(partition or -1),
            offset=int(offset or -1),
            value=value,
            reason=found.get("reason", ""),
            error=found.get("error", ""),
            event_id=found.get("event_id", ""),
            group_id=found.get("group", ""),
            failed_nodes=tuple(n for n in found.get("failed_nodes", "").split(",") if n),
            retries=int(found.get("retries", "0")),
            replays=int(found.get("replays", "0")),
            failed_at=datetime.fromisoformat(failed_at) if failed_at else datetime.now(UTC),
        )


REPLAY_GROUPS = HEADER_PREFIX + "replay_groups"
REPLAYS = HEADER_PREFIX + "replays"


def replay_marks(
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, Any],
) -> tuple[int, frozenset[str] | None]:
    """From a record's headers: how often it was replayed, and the groups it is meant for."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    replays, groups = 0, None
    for name, value in pairs:
        if name == REPLAYS and value:
            text = value.decode() if isinstance(value, bytes) else str(value)
            replays = int(text) if text.isdigit() else 0
        elif name == REPLAY_GROUPS and value is not None:
            text = value.decode() if isinstance(value, bytes) else str(value)
            groups = frozenset(g for g in text.split(",") if g)
    return replays, groups

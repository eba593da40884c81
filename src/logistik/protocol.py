"""logistik's wire protocol: header names, failed-topic names, failure reasons, failed records.

Everything logistik writes to Kafka beside an answer's body, and everything it reads back from a
record's headers, is named here, so producers, the router, replay and tail agree on it.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from logistik.errors import InvalidEventError

HEADER_PREFIX = "logistik."
FAILED_SUFFIX = "-failed"
RETRY_SUFFIX = "-retry"
MAX_TOPIC_CHARS = 249  # Kafka's limit
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_GROUPS_HEADER_BYTES = 64 * 1024  # a replay for more groups than this is not a replay
# Every header value logistik writes is cut to this size, so that a record is never refused for
# its headers (a huge event id or node id would otherwise make it unwritable).
MAX_HEADER_VALUE_BYTES = 4096
# A bundle (one retry record holding several held events of one partition) is kept well under
# Kafka's default record limit of 1 MB, and its events few enough to be called side by side.
MAX_BUNDLE_EVENTS = 100
MAX_BUNDLE_BYTES = 256 * 1024
# Each event of a bundle: its offset (8 bytes) and its length (4 bytes), then its bytes.
_BUNDLE_ENTRY = struct.Struct(">QI")

HeaderValue = str | bytes | None
HeaderList = Sequence[tuple[str, HeaderValue]]


class Header:
    """Names of the Kafka headers logistik writes and reads."""

    # On every published answer.
    EVENT_ID = HEADER_PREFIX + "event_id"
    NODE_ID = HEADER_PREFIX + "node_id"
    VERSION = HEADER_PREFIX + "version"
    MODEL_TYPE = HEADER_PREFIX + "model_type"
    CACHE = HEADER_PREFIX + "cache"  # "hit" when the answer came from the response cache
    # On every failed record (with EVENT_ID).
    REASON = HEADER_PREFIX + "reason"
    ERROR = HEADER_PREFIX + "error"
    TOPIC = HEADER_PREFIX + "topic"
    SOURCE = HEADER_PREFIX + "source"  # topic/partition/offset of the original record
    GROUP = HEADER_PREFIX + "group"
    FAILED_NODES = HEADER_PREFIX + "failed_nodes"
    RETRIES = HEADER_PREFIX + "retries"
    FAILED_AT = HEADER_PREFIX + "failed_at"
    # On a failed record whose value is cut (or left out) because the broker refused it as too
    # large: the original's size in bytes and its SHA-256 (hex); SOURCE says where it is.
    TRUNCATED = HEADER_PREFIX + "truncated"  # "true"
    ORIGINAL_SIZE = HEADER_PREFIX + "original_size"
    SHA256 = HEADER_PREFIX + "sha256"
    # On replayed events (REPLAYS also on failed records: how often the event was replayed).
    REPLAYS = HEADER_PREFIX + "replays"
    REPLAY_GROUPS = HEADER_PREFIX + "replay_groups"
    REPLAYED_FROM = HEADER_PREFIX + "replayed_from"
    # On records of a retry topic (with SOURCE, TOPIC, FAILED_NODES, ERROR and REPLAYS).
    RETRY_GROUP = HEADER_PREFIX + "retry_group"  # the one group the event waits for
    ATTEMPT = HEADER_PREFIX + "attempt"  # calls made so far
    DUE_AT = HEADER_PREFIX + "due_at"  # when to call again, in milliseconds since the epoch
    WAITING_SINCE = HEADER_PREFIX + "waiting_since"  # first put on the retry topic, in ms
    # On a bundle: how many events its value holds (SOURCE names the first one's offset).
    BUNDLE = HEADER_PREFIX + "bundle"


class Reason(StrEnum):
    """Why a record is on a failed topic (the `logistik.reason` header)."""

    EMPTY = "empty"
    NOT_UTF8 = "not-utf8"
    INVALID_JSON = "invalid-json"
    NOT_OBJECT = "not-object"
    MISSING_VERB = "missing-verb"
    INVALID_HEADER = "invalid-header"
    REJECTED = "rejected"
    RETRIES_EXHAUSTED = "retries-exhausted"
    NO_HANDLER = "no-handler"
    PUBLISH_FAILED = "publish-failed"
    INTERNAL = "internal-error"

    @property
    def undecodable(self) -> bool:
        """Whether the record itself cannot be routed, so sending it again would fail again."""
        return self in _UNDECODABLE


_UNDECODABLE = frozenset(
    {
        Reason.EMPTY,
        Reason.NOT_UTF8,
        Reason.INVALID_JSON,
        Reason.NOT_OBJECT,
        Reason.MISSING_VERB,
        Reason.INVALID_HEADER,
    }
)


def failed_topic(topic: str) -> str:
    """The failed topic of a topic, unless a handler names its own."""
    return topic + FAILED_SUFFIX


@functools.lru_cache(maxsize=4096)  # asked for each event a busy group's retry topic takes
def retry_topic(topic: str, group_id: str) -> str:
    """Where events of a topic wait for one group's next call: each group has its own, so that
    a group's backlog is paced apart from the others'."""
    safe = _TOPIC_UNSAFE.sub("_", group_id)
    name = f"{topic}{RETRY_SUFFIX}-{safe}"
    if safe == group_id and len(name) <= MAX_TOPIC_CHARS:
        return name
    # Told apart by a digest of the group id when its own text cannot be a topic name.
    digest = hashlib.sha256(group_id.encode()).hexdigest()[:12]
    return f"{topic}{RETRY_SUFFIX}-{safe[:40]}-{digest}"[:MAX_TOPIC_CHARS]


def bounded(value: str, limit: int = MAX_HEADER_VALUE_BYTES) -> bytes:
    """A header value as UTF-8, cut to `limit` bytes with a marker saying how long it was."""
    data = value.encode()
    if len(data) <= limit:
        return data
    marker = f"…[cut from {len(data)} bytes]".encode()
    kept = data[: max(0, limit - len(marker))].decode("utf-8", "ignore").encode()
    return kept + marker


@dataclass(frozen=True, slots=True)
class RetryMarks:
    """What a retry topic's record says: which group, which attempt, when, and where from."""

    group_id: str
    attempt: int
    due_at_ms: int
    topic: str
    partition: int
    offset: int
    failed_nodes: tuple[str, ...] = ()
    error: str = ""
    replays: int = 0
    since_ms: int = 0
    bundle: int = 0  # events in the record's value as a bundle; 0: the value is the event

    def headers(self) -> list[tuple[str, HeaderValue]]:
        """The record's headers (texts left out when empty)."""
        # Written for each event passed to a retry topic: numbers need no bound, nor a dict.
        found: list[tuple[str, HeaderValue]] = [
            (Header.WAITING_SINCE, b"%d" % self.since_ms),
            (Header.RETRY_GROUP, bounded(self.group_id)),
            (Header.ATTEMPT, b"%d" % self.attempt),
            (Header.DUE_AT, b"%d" % self.due_at_ms),
            (Header.TOPIC, bounded(self.topic)),
            (Header.SOURCE, bounded(f"{self.topic}/{self.partition}/{self.offset}")),
        ]
        if self.failed_nodes:
            found.append((Header.FAILED_NODES, bounded(",".join(self.failed_nodes))))
        if self.error:
            found.append((Header.ERROR, bounded(self.error)))
        found.append((Header.REPLAYS, b"%d" % self.replays))
        if self.bundle:
            found.append((Header.BUNDLE, b"%d" % self.bundle))
        return found


def retry_marks(headers: HeaderList | None) -> RetryMarks:
    """Read a retry record's headers; InvalidEventError when they are not what logistik wrote."""
    found = {name: value for name, value in headers or () if name.startswith(HEADER_PREFIX)}

    def text(name: str) -> str:
        return _header_text(name, found.get(name))

    def number(name: str) -> int:
        value = text(name)
        found = _count(value)
        if found is None:
            raise InvalidEventError(
                Reason.INVALID_HEADER, f"header {name} is not a number: {value[:40]!r}"
            )
        return found

    group = text(Header.RETRY_GROUP)
    topic, _, where = text(Header.SOURCE).partition("/")
    partition_text, _, offset_text = where.partition("/")
    partition, offset = _count(partition_text), _count(offset_text)
    if not group or not topic or partition is None or offset is None:
        raise InvalidEventError(
            Reason.INVALID_HEADER, "a retry record without its group or source headers"
        )
    return RetryMarks(
        group_id=group,
        attempt=number(Header.ATTEMPT),
        due_at_ms=number(Header.DUE_AT),
        topic=topic,
        partition=partition,
        offset=offset,
        failed_nodes=tuple(n for n in text(Header.FAILED_NODES).split(",") if n),
        error=text(Header.ERROR),
        replays=_count(text(Header.REPLAYS)) or 0,
        since_ms=number(Header.WAITING_SINCE) if Header.WAITING_SINCE in found else 0,
        bundle=_bundle_count(text(Header.BUNDLE)) if Header.BUNDLE in found else 0,
    )


def _bundle_count(text: str) -> int:
    count = _count(text)
    if count is None or not 1 <= count <= MAX_BUNDLE_EVENTS:
        raise InvalidEventError(
            Reason.INVALID_HEADER,
            f"header {Header.BUNDLE} is not a count from 1 to {MAX_BUNDLE_EVENTS}: {text[:40]!r}",
        )
    return count


def retry_weight(headers: HeaderList | None) -> int:
    """How many events a retry record holds (1 unless it is a valid bundle), to count it."""
    found = None
    for name, value in headers or ():
        if name == Header.BUNDLE:
            found = value  # the last one, as retry_marks reads it
    if found is None:
        return 1
    try:
        return _bundle_count(_header_text(Header.BUNDLE, found))
    except InvalidEventError:
        return 1  # the router sends it to the failed topic, with the reason


def bundle_value(entries: Sequence[tuple[int, bytes]]) -> bytes:
    """A bundle's value: for each event its offset and length, then its bytes."""
    parts: list[bytes] = []
    for offset, body in entries:
        parts.append(_BUNDLE_ENTRY.pack(offset, len(body)))
        parts.append(body)
    return b"".join(parts)


def bundle_entries(value: bytes | None, count: int) -> list[tuple[int, bytes]]:
    """The (offset, event bytes) pairs of a bundle; InvalidEventError when the value does not
    hold exactly `count` of them."""
    data = value or b""
    if len(data) > MAX_BUNDLE_BYTES + count * _BUNDLE_ENTRY.size:
        raise InvalidEventError(
            Reason.INVALID_HEADER, f"a bundle of {len(data)} bytes, over {MAX_BUNDLE_BYTES}"
        )
    entries: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data) and len(entries) < count:
        if at + _BUNDLE_ENTRY.size > len(data):
            break
        offset, size = _BUNDLE_ENTRY.unpack_from(data, at)
        at += _BUNDLE_ENTRY.size
        if at + size > len(data):
            break
        entries.append((offset, data[at : at + size]))
        at += size
    if len(entries) != count or at != len(data):
        raise InvalidEventError(
            Reason.INVALID_HEADER,
            f"a bundle whose value does not hold the {count} event(s) its header says "
            f"({len(entries)} read, {len(data) - at} byte(s) left over)",
        )
    return entries


def _count(text: str) -> int | None:
    """A header's non-negative number, None unless it is ASCII digits only (not "²" or "-1")."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


@dataclass(frozen=True, slots=True)
class ReplayMarks:
    """What a replayed record's headers say: how often it was replayed, and for which groups."""

    replays: int = 0
    only_groups: frozenset[str] | None = None


NO_MARKS = ReplayMarks()


def replay_marks(headers: HeaderList | Mapping[str, Any] | None) -> ReplayMarks:
    """Read a record's replay headers; InvalidEventError when they are not what replay writes.

    Headers are producer input like the value: anything may be in them.
    """
    if not headers:
        return NO_MARKS
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    replays, groups = 0, None
    for name, value in pairs:
        if name == Header.REPLAYS:
            text = _header_text(name, value)
            if not (text.isascii() and text.isdigit() and len(text) <= 9):
                raise InvalidEventError(
                    Reason.INVALID_HEADER, f"header {name} is not a replay count: {text[:40]!r}"
                )
            replays = int(text)
        elif name == Header.REPLAY_GROUPS:
            text = _header_text(name, value)
            if len(text) > MAX_GROUPS_HEADER_BYTES:
                raise InvalidEventError(
                    Reason.INVALID_HEADER, f"header {name} is longer than {MAX_GROUPS_HEADER_BYTES}"
                )
            groups = frozenset(g for g in text.split(",") if g)
    if replays == 0 and groups is None:
        return NO_MARKS
    return ReplayMarks(replays, groups)


def _header_text(name: str, value: HeaderValue) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEventError(
            Reason.INVALID_HEADER, f"header {name} is not UTF-8: {value[:40]!r}"
        ) from None


@dataclass(frozen=True)
class FailedRecord:
    """One (event, group) that could not be handled, or one record that is not an event."""

    topic: str  # where the event came from
    partition: int
    offset: int
    value: bytes | None  # the event as logistik sent it, or the raw bytes when not an event
    reason: str
    error: str
    event_id: str = ""
    group_id: str = ""
    failed_nodes: tuple[str, ...] = ()
    retries: int = 0
    replays: int = 0
    failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    original_size: int | None = None  # set when `value` is cut: the original's size
    sha256: str = ""  # set when `value` is cut: the original's SHA-256, in hex

    @property
    def truncated(self) -> bool:
        """Whether `value` holds only the beginning of the original (or nothing of it)."""
        return self.original_size is not None

    def cut(self, keep_bytes: int) -> FailedRecord:
        """This record with at most `keep_bytes` of its value, saying so with size and digest.

        With `keep_bytes` 0 it is only a reference: SOURCE says where the original is.
        """
        if self.truncated:
            return replace(self, value=(self.value or b"")[:keep_bytes] or None)
        original = self.value or b""
        return replace(
            self,
            value=original[:keep_bytes] or None,
            original_size=len(original),
            sha256=hashlib.sha256(original).hexdigest(),
        )

    @property
    def source(self) -> str:
        """Where the original record is: topic/partition/offset."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    def headers(self) -> list[tuple[str, HeaderValue]]:
        """Kafka headers that say why and where the record failed."""
        fields = {
            Header.REASON: self.reason,
            Header.ERROR: self.error,
            Header.TOPIC: self.topic,
            Header.SOURCE: self.source,
            Header.EVENT_ID: self.event_id,
            Header.GROUP: self.group_id,
            Header.FAILED_NODES: ",".join(self.failed_nodes),
            Header.RETRIES: str(self.retries),
            Header.REPLAYS: str(self.replays),
            Header.FAILED_AT: self.failed_at.isoformat(timespec="milliseconds"),
        }
        if self.original_size is not None:
            fields[Header.TRUNCATED] = "true"
            fields[Header.ORIGINAL_SIZE] = str(self.original_size)
            fields[Header.SHA256] = self.sha256
        return [(k, bounded(v)) for k, v in fields.items() if v]

    def summary(self, failed_topic: str) -> dict[str, Any]:
        """What the API shows of a failure (not the event itself)."""
        return {
            "at": self.failed_at.isoformat(timespec="milliseconds"),
            "topic": self.topic,
            "failed_topic": failed_topic,
            "source": self.source,
            "event_id": self.event_id or None,
            "group": self.group_id or None,
            "reason": self.reason,
            "error": self.error,
            "nodes": list(self.failed_nodes),
            "retries": self.retries,
            "truncated": self.truncated,
        }

    @classmethod
    def from_headers(cls, value: bytes | None, headers: list[tuple[str, bytes]]) -> FailedRecord:
        """Read a record of a failed topic back; ValueError when its headers are malformed."""
        found = {
            k.removeprefix(HEADER_PREFIX): v.decode("utf-8", "replace")
            for k, v in headers
            if k.startswith(HEADER_PREFIX)
        }
        topic, partition, offset = (found.get("source", "") or "//").rsplit("/", 2)
        failed_at = found.get("failed_at")
        size = found.get("original_size", "")
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
            original_size=int(size) if found.get("truncated") == "true" and size else None,
            sha256=found.get("sha256", ""),
        )

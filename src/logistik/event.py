"""Decoding and normalising events (ActivityStreams-style JSON objects).

The bytes sent to models are the producer's own: when `id` or `published` is missing they are
inserted into the record's bytes rather than the event being serialised again, so numbers,
key order and spacing stay as the producer wrote them.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from logistik.errors import InvalidEventError
from logistik.protocol import Reason

Event = dict[str, Any]

logger = logging.getLogger(__name__)
_malformed_channels_seen: set[str] = set()

# orjson reads an integer beyond 64 bits as a float: the shortest such integer has 19 digits
# (-9223372036854775809), so a record without 19 digits in a row has none. Every digit made a
# zero and the run looked for is ten times quicker than a regular expression.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19
_EXACT = json.JSONDecoder()


def decode_event(raw: bytes | None) -> Event:
    """Parse a record value into an event, adding `id` and `published` where missing."""
    return decode_record(raw)[0]


def decode_record(raw: bytes | None) -> tuple[Event, bytes]:
    """The event in a record, and the bytes to send to models: the record's own when unchanged.

    `id` and `published` are missing when absent or null; any other value (0, "") is kept.
    """
    if not raw:
        raise InvalidEventError(Reason.EMPTY, "the record has no value")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = Reason.NOT_UTF8 if "utf-8" in str(exc).lower() else Reason.INVALID_JSON
        raise InvalidEventError(reason, f"the record is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise InvalidEventError(
            Reason.NOT_OBJECT, f"the record is JSON but not an object (got {type(event).__name__})"
        )
    verb = event.get("verb")
    if not isinstance(verb, str) or not verb:
        raise InvalidEventError(Reason.MISSING_VERB, "the event has no 'verb'")
    if _LONG_DIGITS in raw.translate(_DIGITS_AS_ZERO):
        # Read again with integers kept exact (orjson has validated the record already).
        event = json.loads(raw)
    ident, published = event.get("id"), event.get("published")
    if ident is not None and published is not None:
        return event, raw
    # A uuid and a timestamp need no escaping in JSON: written as they are.
    members, nulls = "", []
    if ident is None:
        if "id" in event:
            nulls.append("id")
        event["id"] = ident = str(uuid.uuid4())
        members = f'"id":"{ident}",'
    if published is None:
        if "published" in event:
            nulls.append("published")
        event["published"] = published = now_text()
        members += f'"published":"{published}",'
    raw = _without_members(raw, nulls) if nulls else raw
    return event, _with_members(raw, members.encode())


def now_text() -> str:
    """The time now in ISO 8601 to the millisecond, UTC (`2026-01-02T03:04:05.678+00:00`)."""
    return _millisecond_text(time.time_ns() // 1_000_000)


# The text of the current millisecond is reused by the events stamped within it: formatting a
# datetime costs more than the rest of decoding a small event.
@functools.lru_cache(maxsize=1)
def _millisecond_text(ms: int) -> str:
    seconds, rest_ms = divmod(ms, 1000)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest_ms * 1000)
    return moment.isoformat(timespec="milliseconds")


def _with_members(raw: bytes, members: bytes) -> bytes:
    """A JSON object's bytes with members (each followed by a comma) put first.

    The rest is kept byte for byte. The object must have members already (an event has its
    verb), or the last comma would be one too many.
    """
    # Only white space may come before an object's brace.
    start = 1 if raw[:1] == b"{" else raw.index(b"{") + 1
    return raw[:start] + members + raw[start:]


def _without_members(raw: bytes, names: Iterable[str]) -> bytes:
    """A JSON object's bytes without the named top-level members, the rest kept byte for byte."""
    text, left_out = raw.decode(), set(names)
    kept: list[str] = []
    at = _past_space(text, text.index("{") + 1)
    while text[at] != "}":
        name, end = _EXACT.raw_decode(text, at)
        end = _past_space(text, _past_space(text, end) + 1)  # past the colon
        _, end = _EXACT.raw_decode(text, end)
        if name not in left_out:
            kept.append(text[at:end])
        at = _past_space(text, end)
        if text[at] == ",":
            at = _past_space(text, at + 1)
    return ("{" + ",".join(kept) + "}").encode()


def first_element(raw: bytes) -> bytes:
    """The bytes of a JSON array's first element, as written."""
    text = raw.decode()
    at = _past_space(text, text.index("[") + 1)
    _, end = _EXACT.raw_decode(text, at)
    return text[at:end].encode()


def elements(raw: bytes) -> list[bytes]:
    """The bytes of each element of a JSON array, as written; ValueError when it is not one."""
    text = raw.decode()
    at = _past_space(text, 0)
    if not text.startswith("[", at):
        raise ValueError("not a JSON list")
    at = _past_space(text, at + 1)
    found: list[bytes] = []
    if text.startswith("]", at):
        at += 1
    else:
        while True:
            _, end = _EXACT.raw_decode(text, at)
            found.append(text[at:end].encode())
            at = _past_space(text, end)
            if text.startswith(",", at):
                at = _past_space(text, at + 1)
            elif text.startswith("]", at):
                at += 1
                break
            else:
                raise ValueError(f"expected ',' or ']' at character {at}")
    if _past_space(text, at) != len(text):
        raise ValueError(f"extra data after the list at character {at}")
    return found


def _past_space(text: str, at: int) -> int:
    """The index of the first character from `at` on that is not JSON white space."""
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def encode_event(event: Event) -> bytes:
    """Serialise an event as sent to models and written to failed topics."""
    return _dumps(event)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, which orjson does not write
        return json.dumps(value, separators=(",", ":")).encode()


def event_id(event: Event) -> str:
    """The event's id as text."""
    return _as_text(event.get("id"))


def actor_key(event: Event) -> bytes | None:
    """The Kafka key of an answer: the event's `actor.id`, when it has one."""
    actor = event.get("actor")
    if isinstance(actor, dict):
        actor_id = actor.get("id")
        if actor_id is not None and actor_id != "":
            return _as_text(actor_id).encode()
    return None


def _as_text(value: Any) -> str:
    """A JSON value as text: a string as it is, anything else as JSON ("" for null)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # exact at any size
    return _dumps(value).decode()


def channel_groups(event: Event) -> frozenset[str] | None:
    """The group ids a channel event is limited to, or None when it goes to every group."""
    target = event.get("target")
    if not isinstance(target, dict) or target.get("objectType") != "channel":
        return None
    content: Any = target.get("content")
    if isinstance(content, str):
        text = content
        try:
            content = orjson.loads(text) if text.strip() else []
        except orjson.JSONDecodeError:
            _report_malformed(text)
            return None
    if not isinstance(content, list) or not all(isinstance(item, str) for item in content):
        _report_malformed(str(content))
        return None
    groups = frozenset(item for item in content if item)
    return groups or None


def _report_malformed(content: str) -> None:
    """Log a malformed channel list once per distinct content, so a bad producer cannot flood."""
    if content in _malformed_channels_seen or len(_malformed_channels_seen) > 1000:
        return
    _malformed_channels_seen.add(content)
    logger.warning(
        "channel event with malformed target.content %.200s: sending to every group", content
    )

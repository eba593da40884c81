"""Decoding and normalising events (ActivityStreams-style JSON objects)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from logistik.errors import InvalidEventError
from logistik.protocol import Reason

Event = dict[str, Any]

logger = logging.getLogger(__name__)
_malformed_channels_seen: set[str] = set()


def decode_event(raw: bytes | None) -> Event:
    """Parse a record value into an event, adding `id` and `published` where missing."""
    return decode_record(raw)[0]


def decode_record(raw: bytes | None) -> tuple[Event, bytes]:
    """The event in a record, and the bytes to send to models: the record's own when unchanged."""
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
    changed = False
    if not event.get("id"):
        event["id"] = str(uuid.uuid4())
        changed = True
    if not event.get("published"):
        event["published"] = datetime.now(UTC).isoformat(timespec="milliseconds")
        changed = True
    assert raw is not None  # an empty record was refused above
    return event, orjson.dumps(event) if changed else raw


def encode_event(event: Event) -> bytes:
    """Serialise an event as sent to models and written to failed topics."""
    return orjson.dumps(event)


def event_id(event: Event) -> str:
    """The event's id as text."""
    return str(event.get("id", ""))


def actor_key(event: Event) -> bytes | None:
    """The Kafka key of an answer: the event's `actor.id`, when it has one."""
    actor = event.get("actor")
    if isinstance(actor, dict):
        actor_id = actor.get("id")
        if actor_id is not None and actor_id != "":
            return str(actor_id).encode()
    return None


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

"""What logistik sends to models is the producer's event: its bytes, ids and numbers kept."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import orjson
import pytest

from logistik.event import (
    actor_key,
    decode_record,
    encode_event,
    event_id,
    first_element,
    now_text,
)
from logistik.routing.model_client import classify

BIG = 123456789012345678901234567890


def test_the_published_stamp_is_the_millisecond_it_was_taken_in() -> None:
    # The text of a millisecond is reused within it: it must still be that millisecond's.
    stamps: set[str] = set()
    deadline_s = time.monotonic() + 5
    while len(stamps) < 20:  # twenty milliseconds, each written anew
        assert time.monotonic() < deadline_s, f"only {len(stamps)} stamps in 5 s"
        before = datetime.now(UTC).isoformat(timespec="milliseconds")
        stamp = now_text()
        after = datetime.now(UTC).isoformat(timespec="milliseconds")
        assert before <= stamp <= after
        stamps.add(stamp)
    assert all(datetime.fromisoformat(stamp).tzinfo == UTC for stamp in stamps)


def test_an_event_without_id_keeps_its_bytes_and_gets_id_and_published_first() -> None:
    raw = b'{ "verb" : "detect",\n "score": 1.50, "n": 1e5, "actor": {"id": "alice"} }'
    event, body = decode_record(raw)
    added = b'{"id":"%s","published":"%s",' % (event["id"].encode(), event["published"].encode())
    assert body == added + raw[1:]
    assert orjson.loads(body) == event


@pytest.mark.parametrize("big", [BIG, -BIG, 2**64, -(2**63) - 1])
def test_integers_beyond_64_bits_stay_exact_in_the_body_the_key_and_the_id(big: int) -> None:
    raw = b'{"verb": "detect", "actor": {"id": %d}, "object": {"count": %d}}' % (big, big)
    event, body = decode_record(raw)
    assert json.loads(body)["actor"]["id"] == big
    assert b'"count": %d}' % big in body
    assert actor_key(event) == str(big).encode()
    assert event["object"]["count"] == big
    with_id, _ = decode_record(b'{"id": %d, "verb": "detect", "published": "now"}' % big)
    assert event_id(with_id) == str(big)


def test_a_long_run_of_digits_inside_a_string_changes_nothing() -> None:
    raw = b'{"id": "12345678901234567890123", "verb": "v", "published": "now", "x": 0.5}'
    event, body = decode_record(raw)
    assert body is raw
    assert event == {"id": "12345678901234567890123", "verb": "v", "published": "now", "x": 0.5}


@pytest.mark.parametrize("ident", [b"0", b"false", b'""', b"[]", b"{}", b"0.0"])
def test_an_id_that_is_present_is_kept_whatever_its_value(ident: bytes) -> None:
    raw = b'{"id": %s, "verb": "v", "published": "now"}' % ident
    event, body = decode_record(raw)
    assert body is raw
    assert event["id"] == orjson.loads(ident)


def test_event_ids_and_keys_are_their_json_text() -> None:
    assert event_id(decode_record(b'{"id": 0, "verb": "v"}')[0]) == "0"
    assert event_id(decode_record(b'{"id": false, "verb": "v"}')[0]) == "false"
    assert event_id(decode_record(b'{"id": {"a": 1}, "verb": "v"}')[0]) == '{"a":1}'
    assert actor_key(decode_record(b'{"verb": "v", "actor": {"id": 0}}')[0]) == b"0"
    assert actor_key(decode_record(b'{"verb": "v", "actor": {"id": ""}}')[0]) is None


def test_a_null_id_or_published_is_replaced_and_appears_once() -> None:
    raw = b'{"id": null, "verb": "v", "n": %d, "published": null, "tail": [1, 2]}' % BIG
    event, body = decode_record(raw)
    assert body.count(b'"id"') == 1 and body.count(b'"published"') == 1
    assert body.endswith(b'"verb": "v","n": %d,"tail": [1, 2]}' % BIG)
    assert json.loads(body) == event
    assert event["id"] and event["published"] and event["n"] == BIG


def test_encode_event_writes_integers_beyond_64_bits() -> None:
    assert orjson.loads(encode_event({"verb": "v", "n": 7})) == {"verb": "v", "n": 7}
    assert json.loads(encode_event({"verb": "v", "n": BIG})) == {"verb": "v", "n": BIG}


def test_a_response_code_pair_publishes_the_models_own_bytes() -> None:
    payload = b' [ {"id": %d, "score": 0.50} , 200 ]' % BIG
    answer = classify(200, payload, None, 0.0)
    assert answer.body == b'{"id": %d, "score": 0.50}' % BIG
    assert first_element(b'["a", 1]') == b'"a"'

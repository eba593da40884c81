"""Pure logic without I/O: config parsing, event decoding, offsets, back-off, answer classes."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from logistik.answer import Outcome
from logistik.config import parse_config
from logistik.errors import ConfigError, InvalidEventError
from logistik.event import actor_key, channel_groups, decode_event
from logistik.handler import Handler
from logistik.kafka.offsets import OffsetBook
from logistik.observe.logs import JsonFormatter, RateLimit, safe_url
from logistik.routing.backoff import Backoff, parse_retry_after
from logistik.routing.model_client import classify
from logistik.routing.registry import Registry, canary_draw


def test_config_expands_environment_variables() -> None:
    text = "kafka:\n  bootstrap_servers: $HOST:${PORT}\n  group_id: ${GROUP:-fallback}\n"
    config = parse_config(text, "x.yaml", {"HOST": "kafka1", "PORT": "9093"})
    assert config.kafka.bootstrap_servers == "kafka1:9093"
    assert config.kafka.group_id == "fallback"


def test_config_reports_every_problem_on_its_own_line() -> None:
    text = "kafka: {group: x}\nrouting: {retries: -1}\nweb: {port: 0}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "x.yaml", {})
    assert str(caught.value).splitlines() == [
        "x.yaml: unknown key 'kafka.group' (did you mean 'group_id'?)",
        "x.yaml: web.port: Input should be greater than or equal to 1 (got 0)",
        "x.yaml: routing.retries: Input should be greater than or equal to 0 (got -1)",
    ]


def test_handler_defaults_and_node_id() -> None:
    handler = Handler.model_validate(
        {
            "name": "face",
            "event": "detect",
            "endpoint": "10.0.0.5",
            "port": 5151,
            "return_to": "face-results",
            "node": 3,
            "timeout": 2.5,
        }
    )
    assert (handler.service_id, handler.group_id, handler.hostname) == ("face", "face", "10.0.0.5")
    assert handler.node_id == "face-10.0.0.5-model-3"
    assert handler.timeout_s == 2.5
    assert handler.failed_topic_name == "detect-failed"
    assert handler.url == "http://10.0.0.5:5151/"


def test_handler_without_return_to_is_refused_unless_decoy() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml: discovery: handlers\[0\] \(a\): return_to is"):
        parse_config(
            "discovery: {handlers: [{name: a, event: t, endpoint: h, port: 1}]}", "x.yaml", {}
        )
    parse_config(
        "discovery: {handlers: [{name: a, event: t, endpoint: h, port: 1, model_type: decoy}]}",
        "x.yaml",
        {},
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"{", "invalid-json"),
        (b"\xff", "not-utf8"),
        (b"3", "not-object"),
        (b'{"verb": 1}', "missing-verb"),
    ],
)
def test_invalid_events_name_their_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        decode_event(raw)
    assert caught.value.reason == reason


def test_event_keys_and_channels() -> None:
    event = decode_event(b'{"verb": "v", "actor": {"id": 42}}')
    assert actor_key(event) == b"42"
    assert actor_key({"verb": "v"}) is None
    channel = {"verb": "v", "target": {"objectType": "channel", "content": '["a", "b"]'}}
    assert channel_groups(channel) == frozenset({"a", "b"})
    assert channel_groups({"verb": "v", "target": {"objectType": "channel", "content": []}}) is None
    assert (
        channel_groups({"verb": "v", "target": {"objectType": "group", "content": '["a"]'}}) is None
    )


def test_offsets_commit_only_past_contiguous_finished_events() -> None:
    book = OffsetBook()
    tracker = book.tracker("t", 0)
    for offset in range(10, 15):
        tracker.add(offset)
    tracker.finish(12)
    tracker.finish(11)
    assert book.to_commit() == {}
    tracker.finish(10)
    assert book.to_commit() == {("t", 0): 13}
    assert book.to_commit() == {}
    tracker.finish(14)
    assert book.to_commit() == {}
    tracker.finish(13)
    assert book.to_commit() == {("t", 0): 15}
    tracker.add(15)
    tracker.finish(15)
    assert book.forget([("t", 0)]) == {("t", 0): 16}
    tracker.finish(16)  # after revocation: ignored
    assert book.to_commit() == {}


def test_backoff_grows_caps_and_honours_retry_after() -> None:
    backoff = Backoff(base_s=0.1, cap_s=1.0, retry_after_cap_s=5.0)
    assert 0.05 <= backoff.delay_s(1) <= 0.1
    assert 0.2 <= backoff.delay_s(3) <= 0.4
    assert 0.5 <= backoff.delay_s(20) <= 1.0
    assert backoff.delay_s(1, retry_after_s=3.0) == 3.0
    assert backoff.delay_s(1, retry_after_s=60.0) == 5.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after("soon") is None


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b'{"a": 1}', Outcome.OK),
        (201, b"[1, 2]", Outcome.OK),
        (204, b"", Outcome.IGNORED),
        (200, b"", Outcome.IGNORED),
        (422, b"", Outcome.DUPLICATE),
        (400, b"", Outcome.REJECTED),
        (404, b"", Outcome.REJECTED),
        (401, b"", Outcome.REJECTED),
        (301, b"", Outcome.REJECTED),
        (429, b"", Outcome.RETRY),
        (408, b"", Outcome.RETRY),
        (500, b"", Outcome.RETRY),
        (503, b"", Outcome.RETRY),
        (200, b"nope", Outcome.RETRY),
    ],
)
def test_answer_classes(status: int, body: bytes, outcome: Outcome) -> None:
    assert classify(status, body, None, 0.0).outcome is outcome


def test_canary_takes_its_share_by_a_stable_hash() -> None:
    base = {"event": "t", "endpoint": "h", "return_to": "r", "service_id": "s"}
    registry = Registry(max_concurrency=4)
    registry.replace(
        [
            Handler.model_validate({**base, "name": "prod", "port": 1}),
            Handler.model_validate(
                {
                    **base,
                    "name": "new",
                    "port": 2,
                    "model_type": "canary",
                    "traffic": 0.2,
                    "group_id": "s",
                }
            ),
        ]
    )
    [group] = registry.groups("t")
    chosen = [group.answering_pool({"id": str(i)})[0].handler.name for i in range(5000)]
    share = chosen.count("new") / len(chosen)
    assert 0.18 <= share <= 0.22
    again = [group.answering_pool({"id": str(i)})[0].handler.name for i in range(5000)]
    assert again == chosen
    assert canary_draw("s", "x") == canary_draw("s", "x") != canary_draw("other", "x")


def test_json_log_lines_carry_event_fields_and_repeats_are_held_back() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "logistik.events", logging.INFO, __file__, 1, "event %s -> %s", ("e1", "n1"), None
    )
    record.event_id, record.outcome = "e1", "ok"
    line = json.loads(formatter.format(record))
    assert (line["message"], line["event_id"], line["outcome"], line["level"]) == (
        "event e1 -> n1",
        "e1",
        "ok",
        "info",
    )
    limit = RateLimit(burst=2, window_s=60)

    def warning() -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, __file__, 1, "broker %s away", ("b",), None)

    assert [limit.filter(warning()) for _ in range(5)] == [True, True, False, False, False]
    assert limit.filter(logging.LogRecord("x", logging.INFO, __file__, 1, "fine", (), None))
    assert (
        safe_url("https://hooks.example.com/services/T0/B0/secret") == "https://hooks.example.com/…"
    )

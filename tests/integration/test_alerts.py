"""Webhook alerts: one critical and one OK per model and interval, never one per event."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from logistik.config import WebhookConfig
from logistik.handler import Handler
from logistik.observe.alerts import CRITICAL, GroupAlert, render
from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer, Reply, echo, wait_until

pytestmark = pytest.mark.one_broker  # the subject is the webhook alerts, not the broker


def test_a_failing_model_raises_one_critical_and_one_ok_alert(
    servers: str,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    topic = unique("alerts")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    broken = threading.Event()
    broken.set()
    model = model_server(lambda ev, n: Reply(500, raw=b"down") if broken.is_set() else echo(ev, n))
    hook = model_server(lambda _e, _n: Reply(200, {"ok": True}), path="/hook")
    config = make_config(
        servers,
        [handler("face", topic, model.port, retries=0)],
        webhook={"url": f"http://127.0.0.1:{hook.port}/hook", "interval_s": 1.0},
    )
    router(config)
    with TopicReader(servers, f"{topic}-failed", f"{topic}-results") as reader:
        produce(servers, topic, [event() for _ in range(20)])
        reader.wait_for(f"{topic}-failed", 20)
        wait_until(lambda: hook.count == 1, what="the critical alert")
        broken.clear()
        produce(servers, topic, [event() for _ in range(20)])
        reader.wait_for(f"{topic}-results", 20)
        wait_until(lambda: hook.count == 2, what="the OK alert")
        produce(servers, topic, [event() for _ in range(5)])
        reader.wait_for(f"{topic}-results", 25)
    critical, ok = (request["text"] for request in hook.requests)
    assert "is failing" in critical and "event(s) failed so far; last error: " in critical
    assert f"| face | face-127.0.0.1-model-0 | 127.0.0.1 | {model.port} |" in critical
    assert "recovered" in ok
    assert hook.count == 2  # the answered events after recovery sent nothing more


def test_payload_formats() -> None:
    face = Handler.model_validate(
        {"name": "face", "event": "t", "endpoint": "10.0.0.1", "port": 5151, "return_to": "r"}
    )
    state = GroupAlert(
        "t",
        "face",
        status=CRITICAL,
        failed_events=3,
        last_error="HTTP 500",
        last_event_id="e1",
        handlers={face.node_id: face},
    )
    slack = json.loads(render(WebhookConfig(url="http://h", format="slack"), state))
    assert slack["text"].startswith("*logistik: model face on t is failing*")
    assert "face  face-10.0.0.1-model-0  10.0.0.1  5151" in slack["text"]
    template = '{"title": "$title", "status": "$status", "msg": "$error"}'
    custom = json.loads(
        render(WebhookConfig(url="http://h", format="template", template=template), state)
    )
    assert custom == {
        "title": "logistik: model face on t is failing",
        "status": "critical",
        "msg": "HTTP 500",
    }
    plain = json.loads(render(WebhookConfig(url="http://h"), state))
    assert "| face | face-10.0.0.1-model-0 | 10.0.0.1 | 5151 |" in plain["text"]

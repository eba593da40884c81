"""The per-event log lines of `logistik run`: failures by default, every outcome on request."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from tests.support.harness import RouterProcess, handler, make_config
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer, Reply

StartProcess = Callable[[dict[str, Any]], RouterProcess]


def rejects_refused(ev: dict[str, Any], _count: int) -> Reply:
    """Answer every event but those whose verb is `refused` (400: failed, no retry)."""
    if ev.get("verb") == "refused":
        return Reply(400, {"error": "not for me"})
    return Reply(200, {"id": ev["id"]})


def route_and_stop(
    servers: str,
    model_server: Callable[..., ModelServer],
    router_process: StartProcess,
    **settings: Any,
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """Route two answered events and a refused one; the router's log, the answered, the refused."""
    topic = unique("events")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    model = model_server(rejects_refused)
    config = make_config(servers, [handler("m", topic, model.port)], **settings)
    answered, refused = [event(), event()], event(verb="refused")
    produce(servers, topic, [*answered, refused])
    with TopicReader(servers, f"{topic}-results", f"{topic}-failed") as reader:
        router = router_process(config)
        reader.wait_for(f"{topic}-results", 2)
        reader.wait_for(f"{topic}-failed", 1)
    router.signal(signal.SIGTERM)
    assert router.wait(30) == 0, router.log()
    return router.log(), answered, refused


def test_by_default_only_failed_events_get_a_line_each(
    servers: str, model_server: Callable[..., ModelServer], router_process: StartProcess
) -> None:
    log, answered, refused = route_and_stop(servers, model_server, router_process)
    assert f"event {refused['id']} failed in group m (rejected after 0 retries)" in log
    assert all(e["id"] not in log for e in answered), log
    assert "logistik.kafka.consumer: assigned" in log  # the router's own lines still at info


def test_event_log_level_info_gives_every_outcome_a_line(
    servers: str, model_server: Callable[..., ModelServer], router_process: StartProcess
) -> None:
    log, answered, refused = route_and_stop(
        servers, model_server, router_process, event_log_level="info", log_level="warning"
    )
    for answer in answered:
        assert f"event {answer['id']} group m -> " in log
    assert f"event {refused['id']} failed in group m" in log
    assert "logistik.kafka.consumer: assigned" not in log  # log_level: warning for the rest

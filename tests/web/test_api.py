"""The REST API served by a running router: handlers with live figures, failures, health."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer, Reply, wait_until

pytestmark = pytest.mark.one_broker  # the subject is the REST API, not the broker


def get(running: RouterThread, path: str) -> Any:
    """GET a JSON document from the router's API."""
    url = f"http://127.0.0.1:{running.config.web.port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_handlers_show_logistiks_figures_and_failures(
    servers: str,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    topic = unique("api")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    good = model_server()
    bad = model_server(lambda _e, _n: Reply(404, {"error": "no such object"}))
    running = router(
        make_config(servers, [handler("good", topic, good.port), handler("bad", topic, bad.port)])
    )
    assert get(running, "/healthz") == {"status": "ok"}
    with TopicReader(servers, f"{topic}-results", f"{topic}-failed") as reader:
        produce(servers, topic, [event() for _ in range(10)])
        reader.wait_for(f"{topic}-results", 10)
        reader.wait_for(f"{topic}-failed", 10)
    # Answers and failures are counted once the broker acknowledged them, which may be after
    # the reader has read them.
    expected = {"events_in": 10, "published": 10, "failed": {"rejected": 10}}
    wait_until(
        lambda: get(running, "/api/status")["topics"].get(topic) == expected,
        what="the topic figures",
    )
    views = {h["node_id"]: h for h in get(running, "/api/handlers")}
    good_view = views["good-127.0.0.1-model-0"]
    assert good_view["state"] == "active"
    assert good_view["uwsgi"] is None  # no uWSGI stats server at its port + 100
    assert good_view["figures"]["requests"] == 10
    assert good_view["figures"]["answers"]["ok"] == 10
    assert good_view["figures"]["latency_ms"]["p50"] > 0
    bad_view = views["bad-127.0.0.1-model-0"]
    assert bad_view["figures"]["answers"]["refused"] == 10
    assert bad_view["figures"]["last_error"] == 'HTTP 404: {"error":"no such object"}'
    failures = get(running, "/api/failures?limit=5")
    assert len(failures) == 5
    assert {f["reason"] for f in failures} == {"rejected"}
    assert get(running, "/api/status")["topics"][topic] == {
        "events_in": 10,
        "published": 10,
        "failed": {"rejected": 10},
    }
    only_bad = get(running, f"/api/handlers?topic={topic}&state=active&type=model")
    assert len(only_bad) == 2

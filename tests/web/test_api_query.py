"""POST /api/query: one event to one registered handler, its answer and timing; nothing else."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from logistik.kafka.embedded import free_port
from tests.support.apache_kafka import Broker
from tests.support.api_client import TOKEN, Client, quiet_config, refused
from tests.support.harness import RouterThread, handler
from tests.support.kafkatools import unique
from tests.support.models import ModelServer, Reply

pytestmark = pytest.mark.one_broker  # the subject is the query endpoint, not the broker

MAX_BYTES = 2000


@pytest.fixture(scope="module")
def api(broker: Broker) -> Iterator[Client]:
    """A running router with a short query timeout and a small answer limit."""
    config = quiet_config(
        broker.bootstrap_servers,
        {"tokens": [TOKEN]},
        query_timeout_s=0.5,
        query_max_bytes=MAX_BYTES,
    )
    running = RouterThread(config).start()
    yield Client.of(running, TOKEN)
    running.stop()


def register(api: Client, model: ModelServer | int, **fields: str) -> str:
    """Register a model server (or a port) as a handler through the API; returns its node id."""
    port = model if isinstance(model, int) else model.port
    reply = api.post("/api/handlers", handler(unique("m"), unique("topic"), port, **fields))
    assert reply.status == 201, reply.text
    return str(reply.json()["node_id"])


def test_query_sends_the_event_to_the_handler_and_shows_its_answer(
    api: Client, model_server: Callable[..., ModelServer]
) -> None:
    model = model_server(path="/v1/detect")
    node = register(api, model, path="/v1/detect")
    reply = api.post(
        "/api/query", {"node_id": node, "event": {"verb": "detect", "actor": {"id": 7}}}
    )
    assert reply.status == 200, reply.text
    answer = reply.json()
    assert model.count == 1
    sent = model.requests[0]
    assert sent["verb"] == "detect" and sent["actor"] == {"id": 7}
    assert sent["id"] and sent["published"]  # normalised as the router does
    assert answer == {
        "node_id": node,
        "url": f"http://127.0.0.1:{model.port}/v1/detect",
        "status": 200,
        "outcome": "ok",
        "latency_ms": answer["latency_ms"],
        "body": {"id": sent["id"], "verb": "detect", "answer": "ok"},
        "error": None,
    }
    assert 0 < answer["latency_ms"] < 500
    given = api.post("/api/query", {"node_id": node, "event": {"verb": "v", "id": "e-1"}}).json()
    assert given["body"]["id"] == "e-1" and model.requests[1]["id"] == "e-1"
    assert api.views()[node]["figures"] is None  # not routing: no figures, nothing published
    assert api.get("/api/status").json()["topics"] == {}


@pytest.mark.parametrize(
    ("reply", "outcome", "body", "error"),
    [
        (Reply(204), "ignored", None, None),
        (Reply(422, {"seen": True}), "duplicate", {"seen": True}, None),
        (
            Reply(404, {"error": "no such object"}),
            "refused",
            {"error": "no such object"},
            'HTTP 404: {"error":"no such object"}',
        ),
        (Reply(503, raw=b"overloaded"), "error", "overloaded", "HTTP 503: overloaded"),
        (Reply(200, raw=b"not json"), "error", "not json", "not JSON"),
    ],
)
def test_query_classifies_answers_as_the_router_does(
    api: Client,
    model_server: Callable[..., ModelServer],
    reply: Reply,
    outcome: str,
    body: object,
    error: str | None,
) -> None:
    model = model_server(lambda _event, _count: reply)
    node = register(api, model)
    answer = api.post("/api/query", {"node_id": node, "event": {"verb": "v"}}).json()
    assert (answer["status"], answer["outcome"], answer["body"]) == (reply.status, outcome, body)
    assert answer["error"] == error or (error and error in answer["error"])


def test_query_reaches_only_registered_handlers(
    api: Client, model_server: Callable[..., ModelServer]
) -> None:
    model = model_server()
    node = register(api, model)
    refused(
        api.post("/api/query", {"node_id": "no-such-model-0", "event": {"verb": "v"}}),
        404,
        "no-such-model-0",
    )
    url = f"http://127.0.0.1:{model.port}/predict"
    refused(
        api.post("/api/query", {"node_id": node, "url": url, "event": {"verb": "v"}}), 422, "url"
    )
    refused(api.post("/api/query", {"url": url, "event": {"verb": "v"}}), 422, "node_id")
    refused(api.post("/api/query", {"node_id": node, "event": {"actor": 1}}), 422, "verb")
    refused(api.post("/api/query", {"node_id": node, "event": [1]}), 422, "event")
    refused(Client(api.base).post("/api/query", {"node_id": node, "event": {"verb": "v"}}), 401)
    assert model.count == 0


def test_query_limits_the_answer_size(
    api: Client, model_server: Callable[..., ModelServer]
) -> None:
    big = model_server(lambda _event, _count: Reply(200, {"blob": "x" * MAX_BYTES}))
    answer = api.post("/api/query", {"node_id": register(api, big), "event": {"verb": "v"}}).json()
    assert (answer["status"], answer["outcome"], answer["body"]) == (200, "error", None)
    assert f"larger than {MAX_BYTES} bytes" in answer["error"]
    fits = model_server(lambda _event, _count: Reply(200, {"blob": "x" * (MAX_BYTES - 20)}))
    answer = api.post("/api/query", {"node_id": register(api, fits), "event": {"verb": "v"}}).json()
    assert answer["outcome"] == "ok" and len(answer["body"]["blob"]) == MAX_BYTES - 20


def test_query_times_out(api: Client, model_server: Callable[..., ModelServer]) -> None:
    gate = threading.Event()
    slow = model_server(lambda _event, _count: Reply(200, {"late": True}, gate=gate))
    try:
        answer = api.post("/api/query", {"node_id": register(api, slow), "event": {"verb": "v"}})
    finally:
        gate.set()
    result = answer.json()
    assert (result["status"], result["outcome"], result["body"]) == (None, "timeout", None)
    assert result["error"] == "timeout after 0.5 s (web.query_timeout_s)"
    assert 450 <= result["latency_ms"] < 5000


def test_query_to_a_model_that_is_not_listening(api: Client) -> None:
    port = free_port()
    answer = api.post("/api/query", {"node_id": register(api, port), "event": {"verb": "v"}}).json()
    assert (answer["status"], answer["outcome"]) == (None, "error")
    assert answer["error"].startswith(f"cannot connect to 127.0.0.1:{port}")

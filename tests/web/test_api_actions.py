"""Rollout actions through the REST API: each with a token, its effect seen in the handler list."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.apache_kafka import Broker
from tests.support.api_client import TOKEN, Client, quiet_config, refused
from tests.support.harness import RouterThread, handler
from tests.support.kafkatools import unique

pytestmark = pytest.mark.one_broker  # the subject is the REST API, not the broker


@pytest.fixture(scope="module")
def api(broker: Broker) -> Iterator[Client]:
    """A running router whose API takes the test token."""
    running = RouterThread(quiet_config(broker.bootstrap_servers, {"tokens": [TOKEN]})).start()
    yield Client.of(running, TOKEN)
    running.stop()


def add(api: Client, name: str, topic: str, port: int = 5151, **fields: Any) -> str:
    """Register a handler through the API and return its node id."""
    reply = api.post("/api/handlers", handler(name, topic, port, **fields))
    assert reply.status == 201, reply.text
    view = reply.json()
    assert view["state"] == "active" and view["source"] == "api"
    return str(view["node_id"])


def test_enable_disable_retire(api: Client) -> None:
    node = add(api, unique("m"), unique("topic"))
    assert api.post(f"/api/handlers/{node}/disable").json()["state"] == "disabled"
    assert api.views()[node]["state"] == "disabled"
    assert api.post(f"/api/handlers/{node}/enable").json()["state"] == "active"
    assert api.views()[node]["enabled"] is True
    retired = api.post(f"/api/handlers/{node}/retire").json()
    assert retired["state"] == "retired" and retired["retired"] is True
    assert api.views(state="retired")[node]["node_id"] == node
    refused(api.post(f"/api/handlers/{node}/enable"), 409, "retired")


def test_traffic_promote_demote(api: Client) -> None:
    topic, name = unique("topic"), unique("face")
    production = add(api, name, topic, version="1")
    canary = add(api, name, topic, 5152, model_type="canary", version="2", node="1")
    changed = api.put(f"/api/handlers/{canary}/traffic", {"traffic": 0.25}).json()
    assert changed["traffic"] == 0.25
    assert api.views(topic=topic)[canary]["traffic"] == 0.25
    promoted = {
        view["node_id"]: view for view in api.post(f"/api/handlers/{canary}/promote").json()
    }
    assert promoted[canary]["model_type"] == "model"
    assert promoted[production]["model_type"] == "canary"
    views = api.views(topic=topic)
    assert (
        views[canary]["model_type"] == "model" and views[canary]["declared_model_type"] == "canary"
    )
    assert views[production]["model_type"] == "canary" and views[production]["traffic"] == 0.0
    refused(api.post(f"/api/handlers/{canary}/demote"), 409, "last active production")
    replica = add(api, name, topic, 5153, version="2", node="2")
    demoted = api.post(f"/api/handlers/{canary}/demote").json()
    assert demoted["model_type"] == "canary" and demoted["traffic"] == 0.0
    assert api.views(topic=topic, type="model").keys() == {replica}


def test_add_edit_delete(api: Client) -> None:
    topic = unique("topic")
    node = add(api, unique("m"), topic, timeout=2)
    assert api.views()[node]["timeout"] == 2
    edited = api.patch(f"/api/handlers/{node}", {"timeout": 5, "retries": 1, "path": "/v2"}).json()
    assert (edited["timeout"], edited["retries"], edited["path"]) == (5, 1, "/v2")
    assert api.views()[node]["url"].endswith("/v2")
    assert api.delete(f"/api/handlers/{node}").json() == {"node_id": node, "deleted": True}
    assert node not in api.views()
    refused(api.get(f"/api/handlers/{node}"), 404, node)


def test_refusals(api: Client) -> None:
    topic = unique("topic")
    node = add(api, unique("m"), topic)
    anonymous, wrong = Client(api.base), Client(api.base, "not-the-token")
    refused(anonymous.post(f"/api/handlers/{node}/disable"), 401, "Bearer")
    refused(wrong.post(f"/api/handlers/{node}/disable"), 401, "invalid bearer token")
    refused(anonymous.delete(f"/api/handlers/{node}"), 401)
    refused(anonymous.post("/api/handlers", handler("x", topic, 1)), 401)
    assert api.views()[node]["state"] == "active"
    refused(api.post("/api/handlers/nobody-here-model-0/disable"), 404, "nobody-here-model-0")
    refused(api.put("/api/handlers/nobody/traffic", {"traffic": 0.1}), 404)
    refused(api.patch("/api/handlers/nobody", {"retries": 1}), 404)
    refused(api.delete("/api/handlers/nobody"), 404)
    refused(api.put(f"/api/handlers/{node}/traffic", {"traffic": 0.5}), 409, "only a canary")
    refused(api.post(f"/api/handlers/{node}/promote"), 409, "already production")


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PUT", "/traffic", {"traffic": 1.5}),
        ("PUT", "/traffic", {"traffic": "lots"}),
        ("PUT", "/traffic", {}),
        ("PATCH", "", {"retries": -1}),
        ("PATCH", "", {"node_id": "other"}),
        ("PATCH", "", {"colour": "blue"}),
        ("PATCH", "", {}),
        ("PATCH", "", ["retries", 1]),
    ],
)
def test_bad_input_is_422(api: Client, method: str, suffix: str, body: Any) -> None:
    node = add(api, unique("m"), unique("topic"))
    refused(api.request(method, f"/api/handlers/{node}{suffix}", body), 422)


def test_bad_handler_fields_and_broken_json_are_422(api: Client) -> None:
    topic = unique("topic")
    refused(api.post("/api/handlers", {"name": "x", "event": topic}), 422, "port")
    refused(api.post("/api/handlers", handler("x", topic, 70000)), 422, "port")
    refused(
        api.post("/api/handlers", {**handler("x", topic, 1), "return_to": None}), 422, "return_to"
    )
    refused(api.post("/api/handlers", raw=b'{"name": "x", '), 422, "JSON")
    refused(api.put("/api/handlers/x/traffic", raw=b"0.5"), 422)
    node = add(api, unique("m"), topic)
    same = handler(api.views()[node]["name"], topic, 5151)
    refused(api.post("/api/handlers", same), 409, "already exists")


def test_hosts_group_handlers_by_endpoint(api: Client) -> None:
    topic = unique("topic")
    first = add(api, unique("a"), topic, 6001, endpoint="10.1.0.1", hostname="gpu-1", version="3")
    second = add(
        api, unique("b"), topic, 6000, endpoint="10.1.0.1", hostname="gpu-1", model_type="decoy"
    )
    other = add(api, unique("c"), topic, 6000, endpoint="10.1.0.2", hostname="gpu-2")
    api.post(f"/api/handlers/{other}/disable")
    hosts = {host["endpoint"]: host for host in api.get("/api/hosts").json()}
    assert hosts["10.1.0.1"]["hostname"] == "gpu-1"
    listed = hosts["10.1.0.1"]["handlers"]
    assert [h["node_id"] for h in listed] == [second, first]  # by port
    assert listed[0] == {
        "node_id": second,
        "name": listed[0]["name"],
        "model_type": "decoy",
        "state": "active",
        "port": 6000,
        "version": "",
    }
    assert listed[1]["version"] == "3"
    assert hosts["10.1.0.2"] == {
        "hostname": "gpu-2",
        "endpoint": "10.1.0.2",
        "handlers": [
            {
                "node_id": other,
                "name": hosts["10.1.0.2"]["handlers"][0]["name"],
                "model_type": "model",
                "state": "disabled",
                "port": 6000,
                "version": "",
            }
        ],
    }


def test_a_handler_without_a_stats_server_has_no_uwsgi_figures(
    api: Client, model_server: Callable[..., Any]
) -> None:
    model = model_server()
    node = add(api, unique("m"), unique("topic"), model.port)
    assert api.views()[node]["uwsgi"] is None
    assert api.get(f"/api/handlers/{node}").json()["uwsgi"] is None


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"endpoint": "127.0.0.2:9/x#"}, "endpoint: not a host name or IP address"),
        ({"hostname": "a/b"}, "hostname: not a host name or IP address"),
        ({"node": "1/2"}, "node: may not hold '/'"),
        ({"method": "GET /x"}, "method: must be one of GET, POST, PUT, PATCH, DELETE"),
        ({"path": "x#"}, "path: must start with '/'"),
        ({"version": "v" * 300}, "version: longer than 255 characters"),
    ],
)
def test_a_handler_with_a_field_that_is_no_host_path_or_method_is_refused(
    api: Client, fields: dict[str, Any], words: str
) -> None:
    topic = unique("topic")
    refused(api.post("/api/handlers", handler(unique("x"), topic, 1, **fields)), 422, words)
    node = add(api, unique("m"), topic)
    refused(api.patch(f"/api/handlers/{node}", fields), 422, words.partition(":")[0])


def test_a_handler_answering_to_its_own_topic_is_refused(api: Client) -> None:
    topic = unique("topic")
    looped = handler(unique("x"), topic, 1, return_to=topic)
    refused(api.post("/api/handlers", looped), 422, "return_to is the topic it handles")
    node = add(api, unique("m"), topic)
    refused(api.patch(f"/api/handlers/{node}", {"return_to": topic}), 422, "the topic it handles")
    assert api.views()[node]["state"] == "active"

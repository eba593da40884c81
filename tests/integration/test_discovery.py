"""Consul discovery with real model servers and broker, on the Consul double or a real Consul."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from logistik.control.store import HandlerRecord
from tests.support.consul_fixtures import ConsulTarget
from tests.support.harness import RouterThread, make_config, on_store
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer, wait_until

StartModel = Callable[..., ModelServer]
StartRouter = Callable[[dict[str, Any]], RouterThread]


@pytest.fixture
def topic(servers: str) -> str:
    """A fresh topic with its results and failed topics."""
    name = unique("disc")
    create_topics(servers, name, f"{name}-results", f"{name}-failed", partitions=2)
    return name


def register(
    consul: ConsulTarget, name: str, server: ModelServer, service_id: str, **tags: str
) -> None:
    """Register a model the way `logistik register` does: tags and a passing TTL check."""
    answer = consul.put(
        "/v1/agent/service/register",
        {
            "Name": name,
            "ID": service_id,
            "Address": "127.0.0.1",
            "Port": server.port,
            "Tags": ["logistik", *(f"{k}={v}" for k, v in tags.items())],
            "Check": {"TTL": "60s", "Status": "passing"},
        },
    )
    assert answer.status == 200, answer.text
    consul.track(service_id)


def start(router: StartRouter, servers: str, consul: ConsulTarget) -> tuple[str, RouterThread]:
    """Start a router discovering from Consul; returns its store URL and the router."""
    config = make_config(servers, [], discovery={"consul": {"url": consul.url}, "refresh_s": 0.2})
    running = router(config)
    return str(config["database"]["url"]), running


def records(url: str) -> dict[str, HandlerRecord]:
    """The store's handlers by node id."""
    return {r.node_id: r for r in on_store(url, lambda s: s.find())}


def down_in_router(running: RouterThread, topic: str) -> set[str]:
    """The node ids the running router holds down on a topic."""
    assert running.runner is not None
    return {node for group in running.runner.registry.groups(topic) for node in group.down}


def full_tags(topic: str, node: str, **extra: str) -> dict[str, str]:
    """Tags that leave nothing to /info."""
    return {
        "model": "model",
        "node": node,
        "hostname": "mk2",
        "version": "1",
        "event": topic,
        "returnto": f"{topic}-results",
        "path": "/predict",
        **extra,
    }


def test_new_instances_are_discovered_while_events_flow_and_share_the_load(
    servers: str,
    topic: str,
    consul: ConsulTarget,
    model_server: StartModel,
    router: StartRouter,
) -> None:
    name = consul.name("face")
    first, second = model_server(), model_server()
    register(consul, name, first, consul.name("a"), **full_tags(topic, "0"))
    url, _ = start(router, servers, consul)
    sent: list[dict[str, Any]] = []
    with TopicReader(servers, f"{topic}-results") as reader:

        def answered_by(server: ModelServer) -> bool:
            batch = [event() for _ in range(10)]
            sent.extend(batch)
            produce(servers, topic, batch)
            return server.count > 0

        wait_until(lambda: answered_by(first), timeout_s=30, what="the first instance")
        register(consul, name, second, consul.name("b"), **full_tags(topic, "1"))
        wait_until(lambda: answered_by(second), timeout_s=30, what="the new instance")
        records_ = reader.wait_for(f"{topic}-results", len(sent), timeout_s=30)
    ids = [r.headers["logistik.event_id"] for r in records_]
    assert sorted(ids) == sorted(e["id"] for e in sent)  # each event answered exactly once
    assert first.count + second.count == len(sent)
    stored = records(url)[f"{name}-mk2-model-1"]
    assert (stored.source, stored.handler.consul_service_id) == ("consul", consul.name("b"))


def test_critical_and_deregistered_instances_stop_getting_events(
    servers: str,
    topic: str,
    consul: ConsulTarget,
    model_server: StartModel,
    router: StartRouter,
) -> None:
    name = consul.name("face")
    first, second = model_server(), model_server()
    register(consul, name, first, consul.name("a"), **full_tags(topic, "0"))
    register(consul, name, second, consul.name("b"), **full_tags(topic, "1"))
    url, running = start(router, servers, consul)
    node_b = f"{name}-mk2-model-1"
    wait_until(lambda: records(url).get(node_b) is not None, what="discovery")
    assert consul.put(f"/v1/agent/check/fail/service:{consul.name('b')}").status == 200
    wait_until(lambda: records(url)[node_b].state == "down", what="the instance marked down")
    assert "checks not passing" in (records(url)[node_b].problem or "")
    # The store says down first; the router follows on its next reload of the store.
    wait_until(lambda: node_b in down_in_router(running, topic), what="the router following")
    before = second.count
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, [event() for _ in range(20)])
        reader.wait_for(f"{topic}-results", 20)
    assert second.count == before  # a critical instance gets nothing
    assert consul.put(f"/v1/agent/check/pass/service:{consul.name('b')}").status == 200
    wait_until(lambda: records(url)[node_b].state == "active", what="the instance back")
    assert consul.put(f"/v1/agent/service/deregister/{consul.name('b')}").status == 200
    wait_until(lambda: records(url)[node_b].state == "gone", what="the instance gone")


def test_info_fills_what_the_tags_leave_out_and_problems_are_reported(
    servers: str,
    topic: str,
    consul: ConsulTarget,
    model_server: StartModel,
    router: StartRouter,
) -> None:
    name = consul.name("face")
    info = {
        "event": topic,
        "return_to": f"{topic}-results",
        "path": "/predict",
        "retries": 1,
        "timeout": 2.5,
    }
    informed = model_server(info=info)
    silent = model_server()
    register(
        consul,
        name,
        informed,
        consul.name("a"),
        model="model",
        node="0",
        hostname="mk2",
        environment="prod",
    )
    register(consul, name, silent, consul.name("b"), model="model", node="1")
    url, _ = start(router, servers, consul)
    node_a = f"{name}-mk2-model-0"
    wait_until(lambda: len(records(url)) == 2, what="both instances in the store")
    found = records(url)
    assert found[node_a].state == "active"
    handler = found[node_a].handler
    assert (handler.event, handler.return_to, handler.retries, handler.timeout_s) == (
        topic,
        f"{topic}-results",
        1,
        2.5,
    )
    assert informed.info_requests == ["/info/prod"]
    [other] = [r for n, r in found.items() if n != node_a]
    assert other.state == "down"
    assert "no hostname= tag" in (other.problem or "")
    assert f"GET http://127.0.0.1:{silent.port}/info answered HTTP 404" in (other.problem or "")
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, [event()])
        [record] = reader.wait_for(f"{topic}-results", 1)
    assert record.headers["logistik.node_id"] == node_a


def test_admin_state_survives_rediscovery(
    servers: str,
    topic: str,
    consul: ConsulTarget,
    model_server: StartModel,
    router: StartRouter,
) -> None:
    name = consul.name("face")
    model = model_server()
    register(consul, name, model, consul.name("a"), **full_tags(topic, "0"))
    url, _ = start(router, servers, consul)
    node = f"{name}-mk2-model-0"
    wait_until(lambda: node in records(url), what="discovery")
    on_store(url, lambda s: s.disable(node))
    register(consul, name, model, consul.name("a"), **full_tags(topic, "0", version="2"))
    wait_until(lambda: records(url)[node].handler.version == "2", what="the new version")
    assert records(url)[node].state == "disabled"


def test_consul_down_keeps_routing_with_the_last_known_handlers(
    servers: str,
    topic: str,
    consul: ConsulTarget,
    model_server: StartModel,
    router: StartRouter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    double = consul.require_double()
    name = consul.name("face")
    model = model_server()
    register(consul, name, model, consul.name("a"), **full_tags(topic, "0"))
    url, _ = start(router, servers, consul)
    wait_until(lambda: f"{name}-mk2-model-0" in records(url), what="discovery")
    double.stop()
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, [event() for _ in range(5)])
        reader.wait_for(f"{topic}-results", 5)
    wait_until(
        lambda: "routing with the last known handlers" in caplog.text, what="the outage reported"
    )
    double.start()
    wait_until(
        lambda: "discovery: Consul answers again" in caplog.text,
        timeout_s=40,
        what="the recovery reported",
    )
    assert records(url)[f"{name}-mk2-model-0"].state == "active"

"""Consul discovery with real model servers and broker, on the Consul double or a real Consul."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from logistik.config import ConsulConfig
from logistik.control.discovery import ConsulDiscovery
from logistik.control.store import HandlerRecord, Store
from logistik.kafka.embedded import free_port
from tests.support.consul_fixtures import ConsulTarget
from tests.support.databases import PostgresServer
from tests.support.harness import RouterThread, make_config, on_store
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer, wait_until

pytestmark = pytest.mark.one_broker  # the subject is Consul discovery, not the broker

StartModel = Callable[..., ModelServer]
StartRouter = Callable[[dict[str, Any]], RouterThread]


@pytest.fixture
def topic(servers: str) -> str:
    """A fresh topic with its results and failed topics."""
    name = unique("disc")
    create_topics(servers, name, f"{name}-results", f"{name}-failed", partitions=2)
    return name


def register(
    consul: ConsulTarget,
    name: str,
    server: ModelServer | int,
    service_id: str,
    address: str = "127.0.0.1",
    **tags: str,
) -> None:
    """Register a model (or a port) as `logistik register` does: tags and a passing TTL check."""
    answer = consul.put(
        "/v1/agent/service/register",
        {
            "Name": name,
            "ID": service_id,
            "Address": address,
            "Port": server if isinstance(server, int) else server.port,
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
    assert other.state == "invalid"  # no return_to: its /info answered 404
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


def test_an_instance_without_a_topic_never_stops_routing(
    servers: str,
    topic: str,
    consul: ConsulTarget,
    model_server: StartModel,
    router: StartRouter,
) -> None:
    routed = model_server()
    register(consul, consul.name("face"), routed, consul.name("a"), **full_tags(topic, "0"))
    url, _ = start(router, servers, consul)
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, [event()])
        reader.wait_for(f"{topic}-results", 1)
        # Registered before its model listens: no event= tag, and no /info to ask yet.
        early = consul.name("early")
        register(consul, early, free_port(), consul.name("b"), model="model", hostname="mk3")
        node = f"{early}-mk3-model-0"
        wait_until(lambda: node in records(url), what="the instance stored")
        assert records(url)[node].state == "invalid"
        assert "no event" in (records(url)[node].problem or "")
        produce(servers, topic, [event() for _ in range(5)])
        reader.wait_for(f"{topic}-results", 6)


def test_info_gives_the_path_method_and_timeout_the_tags_leave_out(
    servers: str,
    topic: str,
    consul: ConsulTarget,
    model_server: StartModel,
    router: StartRouter,
) -> None:
    model = model_server(info={"path": "/predict", "method": "PUT", "timeout": 2.5})
    tags = {k: v for k, v in full_tags(topic, "0").items() if k != "path"}
    register(consul, consul.name("face"), model, consul.name("a"), **tags)
    url, _ = start(router, servers, consul)
    node = f"{consul.name('face')}-mk2-model-0"
    wait_until(lambda: node in records(url), what="discovery")
    handler = records(url)[node].handler
    assert (handler.path, handler.method, handler.timeout_s) == ("/predict", "PUT", 2.5)
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, [event()])
        reader.wait_for(f"{topic}-results", 1)
    assert model.count == 1


# --- Discovery on its own against a hostile or broken Consul, and hostile models ------------


async def stored(store: Store) -> dict[str, HandlerRecord]:
    """The store's handlers by node id."""
    return {r.node_id: r for r in await store.records()}


async def eventually(check: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> None:
    """Wait until an async check holds."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def discovering(
    consul: ConsulTarget, tmp_path: Path, database_url: str | None = None
) -> AsyncIterator[tuple[ConsulDiscovery, Store]]:
    """Discovery running against the Consul of the test, writing to a store (SQLite unless told)."""
    store = await Store.open(database_url or f"sqlite:///{tmp_path / 'discovery.db'}")
    session = aiohttp.ClientSession()
    discovery = ConsulDiscovery(ConsulConfig(url=consul.url), store, session, wait_s=2.0)
    stop = asyncio.Event()
    running = asyncio.create_task(discovery.run(stop))
    try:
        yield discovery, store
        assert not running.done(), "discovery ended before it was stopped"
    finally:
        stop.set()
        await running
        await session.close()
        await store.close()


def seed(topic: str, node: str, hostname: str = "mk2") -> dict[str, str]:
    """Tags of an instance that needs nothing from /info."""
    return {**full_tags(topic, node), "hostname": hostname}


def hostile_entry(service: str, consul_id: str, **changes: Any) -> dict[str, Any]:
    """A health entry as Consul would never store it, for a tampered answer."""
    body = {"ID": consul_id, "Service": service, "Address": "127.0.0.1", "Port": 9, "Tags": []}
    return {"Node": {"Address": "127.0.0.1"}, "Service": {**body, **changes}, "Checks": []}


def warnings_of(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    """Discovery's warning lines holding the words."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "logistik.control.discovery" and words in r.getMessage()
    ]


async def test_a_malformed_entry_is_skipped_alone_and_the_watch_goes_on(
    consul: ConsulTarget, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    double = consul.require_double()
    name = consul.name("face")
    bad = [
        hostile_entry(name, "bad-port", Port="abc", Tags=["logistik"]),
        hostile_entry(name, "bad-tags", Tags=[None, 5]),
    ]
    double.tamper = lambda path, answer, headers: (
        ([*answer, *bad] if path.startswith("/v1/health/service/") else answer),
        headers,
    )
    register(consul, name, free_port(), consul.name("a"), **seed("t", "0"))
    register(consul, name, free_port(), consul.name("b"), **seed("t", "1"))
    async with discovering(consul, tmp_path) as (discovery, store):
        await eventually(
            lambda: _states(store, {f"{name}-mk2-model-{n}": "active" for n in "01"}),
            what="both good instances",
        )
        register(consul, name, free_port(), consul.name("c"), **seed("t", "2"))
        await eventually(lambda: _has(store, f"{name}-mk2-model-2"), what="a third instance")
        assert consul.put(f"/v1/agent/service/deregister/{consul.name('b')}").status == 200
        await eventually(
            lambda: _states(store, {f"{name}-mk2-model-1": "gone"}), what="deregistration seen"
        )
        assert discovery.error is None
    assert warnings_of(caplog, "bad-port") == [
        f"discovery: ignoring instance bad-port of service {name}: Port: not a port number ('abc')"
    ]
    assert warnings_of(caplog, "bad-tags") == [
        f"discovery: ignoring instance bad-tags of service {name}: Tags: not a list of strings "
        "([None, 5])"
    ]


async def test_an_answer_of_the_wrong_shape_is_retried_with_back_off(
    consul: ConsulTarget, tmp_path: Path
) -> None:
    double = consul.require_double()
    name = consul.name("face")
    register(consul, name, free_port(), consul.name("a"), **seed("t", "0"))
    double.tamper = lambda path, answer, headers: (
        (["not", "an", "object"] if path == "/v1/catalog/services" else answer),
        headers,
    )
    async with discovering(consul, tmp_path) as (discovery, store):
        await eventually(lambda: _true(discovery.error is not None), what="the error shown")
        assert "answered /v1/catalog/services with list, not an object" in (discovery.error or "")
        asked = len(double.requests)
        await asyncio.sleep(1.0)  # the time a busy loop would make thousands of requests in
        assert len(double.requests) - asked < 10
        double.tamper = None
        await eventually(lambda: _has(store, f"{name}-mk2-model-0"), what="discovery back")
        await eventually(lambda: _true(discovery.error is None), what="the error cleared")


async def test_an_index_that_is_no_number_is_asked_again_with_back_off_not_in_a_loop(
    consul: ConsulTarget, tmp_path: Path
) -> None:
    double = consul.require_double()
    name = consul.name("face")
    register(consul, name, free_port(), consul.name("a"), **seed("t", "0"))
    double.tamper = lambda path, answer, headers: (answer, {**headers, "X-Consul-Index": "abc"})
    async with discovering(consul, tmp_path) as (_discovery, store):
        await eventually(lambda: _has(store, f"{name}-mk2-model-0"), what="discovery")
        started = len(double.requests)
        await asyncio.sleep(2.0)  # the time a busy loop would make thousands of requests in
        assert len(double.requests) - started < 20


async def test_hostile_fields_are_refused_with_one_line_naming_the_service_and_field(
    consul: ConsulTarget, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = consul.name("face")
    register(consul, name, free_port(), consul.name("good"), **seed("t", "0"))
    register(consul, name, free_port(), consul.name("huge"), **seed("t", "1", "h" * 300_000))
    register(consul, name, free_port(), consul.name("slash"), **seed("t", "2", "a/b"))
    register(consul, name, free_port(), consul.name("node"), **{**seed("t", "3"), "node": "3/4"})
    register(consul, name, 5151, consul.name("addr"), address="127.0.0.2:9/x#", **seed("t", "5"))
    slashed = consul.name("svc/x")
    register(consul, slashed, free_port(), consul.name("svc"), **seed("t", "0"))
    async with discovering(consul, tmp_path) as (_discovery, store):
        await eventually(lambda: _has(store, f"{name}-mk2-model-0"), what="the good instance")
        await eventually(
            lambda: _true(len(warnings_of(caplog, "ignoring")) >= 5), what="the refusals"
        )
        assert list(await stored(store)) == [f"{name}-mk2-model-0"]
    lines = warnings_of(caplog, "ignoring")
    expected = {
        "huge": "Tags: more than 64 tags, or one longer than 1024 characters",
        "slash": "hostname: not a host name or IP address",
        "node": "node: may not hold '/' or white space",
        "addr": "Address: not a host name or IP address ('127.0.0.2:9/x#')",
    }
    for label, words in expected.items():
        [line] = [line for line in lines if f"instance {consul.name(label)} " in line]
        assert f"of service {name}: {words}" in line
    [service_line] = [line for line in lines if "ignoring service" in line]
    assert slashed in service_line and "holds '/'" in service_line
    assert all(len(line) < 600 for line in lines)


@pytest.fixture
def slow_port() -> Iterator[int]:
    """A port that takes connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


async def test_slow_info_answers_are_asked_at_once_and_not_again_at_every_sync(
    consul: ConsulTarget, tmp_path: Path, slow_port: int
) -> None:
    name = consul.name("face")
    for n in range(4):
        register(consul, name, slow_port, consul.name(f"slow{n}"), model="model", node=str(n))
    async with discovering(consul, tmp_path) as (_discovery, store):
        began = time.monotonic()
        register(consul, name, free_port(), consul.name("good"), **seed("t", "9"))
        await eventually(lambda: _has(store, f"{name}-mk2-model-9"), what="the good instance")
        assert time.monotonic() - began < 8.0  # one short timeout, not four in a row
        began = time.monotonic()
        register(consul, name, free_port(), consul.name("next"), **seed("t", "8"))
        await eventually(lambda: _has(store, f"{name}-mk2-model-8"), what="the next instance")
        assert time.monotonic() - began < 2.5  # the slow ones are not asked again meanwhile


async def test_a_model_registered_before_it_listens_is_routable_once_it_answers_info(
    consul: ConsulTarget, tmp_path: Path
) -> None:
    topic = unique("late")
    model = ModelServer(info={"event": topic, "return_to": f"{topic}-results"})
    name = consul.name("face")
    register(consul, name, model, consul.name("a"), model="model", hostname="mk2")
    node = f"{name}-mk2-model-0"
    async with discovering(consul, tmp_path) as (_discovery, store):
        await eventually(lambda: _states(store, {node: "invalid"}), what="stored as invalid")
        model.start()
        try:
            await eventually(lambda: _states(store, {node: "active"}), what="active once up")
        finally:
            model.stop()
        assert (await stored(store))[node].handler.event == topic


@pytest.mark.parametrize(
    ("info", "words"),
    [
        ({"event": "t", "return_to": "r", "method": "GET /x"}, "left out method: must be one of"),
        ({"event": "t", "return_to": "r", "path": "predict"}, "left out path: must start with"),
        ({"event": "t", "return_to": "t"}, "return_to is the topic it handles (t)"),
        ({"event": "t" * 70_000}, "more than 64 KiB"),
    ],
)
async def test_a_hostile_info_answer_leaves_the_instance_stored_with_its_problem_and_no_events(
    consul: ConsulTarget,
    tmp_path: Path,
    model_server: StartModel,
    info: dict[str, Any],
    words: str,
) -> None:
    model = model_server(info=info)
    name = consul.name("face")
    register(consul, name, model, consul.name("a"), model="model", hostname="mk2")
    node = f"{name}-mk2-model-0"
    async with discovering(consul, tmp_path) as (_discovery, store):
        await eventually(lambda: _has(store, node), what="the instance stored")
        record = (await stored(store))[node]
        assert words in (record.problem or "")
        assert record.state in ("down", "invalid")
        assert not record.handler.active


async def _has(store: Store, node: str) -> bool:
    return node in await stored(store)


async def _states(store: Store, wanted: dict[str, str]) -> bool:
    found = await stored(store)
    return all(node in found and found[node].state == s for node, s in wanted.items())


async def _true(value: bool) -> bool:
    return value


async def test_discovery_outlives_a_store_outage_and_writes_what_it_missed(
    consul: ConsulTarget, tmp_path: Path, own_postgres: PostgresServer
) -> None:
    name = consul.name("face")
    register(consul, name, free_port(), consul.name("a"), **seed("t", "0"))
    async with discovering(consul, tmp_path, own_postgres.create_database()) as (
        discovery,
        store,
    ):
        await eventually(lambda: _has(store, f"{name}-mk2-model-0"), what="discovery")
        await asyncio.to_thread(own_postgres.pause)
        register(consul, name, free_port(), consul.name("b"), **seed("t", "1"))
        await eventually(lambda: _true(discovery.failure is not None), what="the failure shown")
        assert "cannot write handlers to the store" in (discovery.failure or "")
        assert discovery.error is None  # Consul itself answers
        await asyncio.to_thread(own_postgres.resume)
        await eventually(lambda: _has(store, f"{name}-mk2-model-1"), timeout_s=60, what="later")
        await eventually(lambda: _true(discovery.failure is None), what="the failure cleared")

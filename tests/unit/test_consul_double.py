"""The Consul double answers like Consul's HTTP API documentation says.

Every test talks HTTP only (so it runs unchanged against a real Consul with LK_TEST_CONSUL_URL),
except the ones that call `consul.require_double()`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

import consul as py_consul
import pytest

from logistik.control.consul import ConsulClient, ConsulError, agent_url, go_duration, next_index
from tests.support.consul_double import ConsulDouble, go_duration_s
from tests.support.consul_fixtures import ConsulTarget, HttpAnswer, http
from tests.support.models import wait_until

JITTER = 1 / 16  # Consul adds up to wait/16 to a blocking query


def register(consul: ConsulTarget, label: str, **fields: Any) -> tuple[str, str]:
    """Register a service with a TTL check through the agent API; (name, id)."""
    name = consul.name(label)
    service_id = fields.pop("ID", f"{name}-1")
    body = {"Name": name, "ID": service_id, **fields}
    if "Checks" not in body:
        body.setdefault("Check", {"TTL": "30s"})
    answer = consul.put("/v1/agent/service/register", body)
    assert answer.status == 200, answer.text
    return name, service_id


def timed(call: Any) -> tuple[float, HttpAnswer]:
    """Seconds a call took, and its answer."""
    start = time.monotonic()
    answer = call()
    return time.monotonic() - start, answer


def test_registered_service_has_consul_shapes(consul: ConsulTarget) -> None:
    tags = ["logistik", "model=model", "node=3"]
    name, service_id = register(
        consul, "shapes", Tags=tags, Address="10.1.2.3", Port=5052, Meta={"team": "ml"}
    )

    service = consul.get("/v1/agent/services").json()[service_id]
    assert (service["ID"], service["Service"], service["Tags"]) == (service_id, name, tags)
    assert (service["Address"], service["Port"], service["Meta"]) == (
        "10.1.2.3",
        5052,
        {"team": "ml"},
    )

    check = consul.get("/v1/agent/checks").json()[f"service:{service_id}"]
    assert check["Name"] == f"Service '{name}' check"
    assert check["Status"] == "critical"  # a TTL check starts critical unless Status is given
    assert (check["ServiceID"], check["ServiceName"], check["ServiceTags"]) == (
        service_id,
        name,
        tags,
    )
    assert check["Type"] == "ttl"


def test_catalog_lists_the_service_with_consul_shapes(consul: ConsulTarget) -> None:
    tags = ["logistik", "model=model", "node=3"]
    name, service_id = register(
        consul, "catalog", Tags=tags, Address="10.1.2.3", Port=5052, Meta={"team": "ml"}
    )

    services = consul.get("/v1/catalog/services")
    assert services.json()[name] == tags
    assert "consul" in services.json()
    assert services.index >= 1
    assert services.headers["X-Consul-KnownLeader"] == "true"
    assert "X-Consul-LastContact" in services.headers

    [entry] = consul.get(f"/v1/catalog/service/{name}").json()
    for key in ("ID", "Node", "Address", "Datacenter", "ServiceID", "ServiceName"):
        assert key in entry
    assert (entry["ServiceID"], entry["ServiceName"], entry["ServiceTags"]) == (
        service_id,
        name,
        tags,
    )
    assert (entry["ServiceAddress"], entry["ServicePort"]) == ("10.1.2.3", 5052)
    assert entry["ServiceMeta"] == {"team": "ml"}
    assert entry["ModifyIndex"] >= entry["CreateIndex"] >= 1


def test_health_entries_carry_node_service_and_checks(consul: ConsulTarget) -> None:
    name, service_id = register(consul, "health", Tags=["a"], Address="10.1.2.3", Port=80)

    answer = consul.get(f"/v1/health/service/{name}")
    assert answer.status == 200 and answer.index >= 1
    [entry] = answer.json()
    assert set(entry) == {"Node", "Service", "Checks"}
    assert {"ID", "Node", "Address", "Datacenter"} <= set(entry["Node"])
    service = entry["Service"]
    assert (service["ID"], service["Service"], service["Tags"]) == (service_id, name, ["a"])
    assert (service["Address"], service["Port"]) == ("10.1.2.3", 80)
    checks = {check["CheckID"]: check for check in entry["Checks"]}
    assert checks["serfHealth"]["Status"] == "passing"
    assert checks["serfHealth"]["ServiceID"] == ""
    assert checks[f"service:{service_id}"]["Status"] == "critical"


def test_several_checks_are_numbered_and_status_sets_the_start(consul: ConsulTarget) -> None:
    _, service_id = register(
        consul, "multi", Checks=[{"TTL": "30s", "Status": "passing"}, {"TTL": "30s"}]
    )
    checks = consul.get("/v1/agent/checks").json()
    assert checks[f"service:{service_id}:1"]["Status"] == "passing"
    assert checks[f"service:{service_id}:2"]["Status"] == "critical"


def test_passing_filter_and_its_spellings(consul: ConsulTarget) -> None:
    name, service_id = register(consul, "passing")
    register(consul, "passing", ID=f"{name}-2", Check={"TTL": "30s", "Status": "passing"})

    def ids(query: str) -> set[str]:
        answer = consul.get(f"/v1/health/service/{name}{query}")
        assert answer.status == 200, answer.text
        return {entry["Service"]["ID"] for entry in answer.json()}

    both, healthy = {service_id, f"{name}-2"}, {f"{name}-2"}
    assert ids("") == both
    for query in ("?passing", "?passing=1", "?passing=true"):
        assert ids(query) == healthy
    assert ids("?passing=false") == both

    assert consul.put(f"/v1/agent/check/warn/service:{name}-2?note=slow").status == 200
    assert ids("?passing") == set()  # warning is not passing
    update = {"Status": "passing", "Output": "fine"}
    assert consul.put(f"/v1/agent/check/update/service:{service_id}", update).status == 200
    assert ids("?passing") == {service_id}
    assert consul.get("/v1/agent/checks").json()[f"service:{service_id}"]["Output"] == "fine"
    assert consul.get(f"/v1/health/service/{name}?passing=nope").status == 400


def test_tag_filter_matches_every_tag_regardless_of_case(consul: ConsulTarget) -> None:
    name, first = register(consul, "tags", Tags=["logistik", "model=model"])
    register(consul, "tags", ID=f"{name}-2", Tags=["logistik", "model=canary"])

    def ids(path: str) -> set[str]:
        entries = consul.get(path).json()
        return {e["ServiceID"] if "ServiceID" in e else e["Service"]["ID"] for e in entries}

    assert ids(f"/v1/catalog/service/{name}?tag=logistik") == {first, f"{name}-2"}
    assert ids(f"/v1/catalog/service/{name}?tag=MODEL=model") == {first}
    assert ids(f"/v1/health/service/{name}?tag=logistik&tag=model=canary") == {f"{name}-2"}
    assert ids(f"/v1/health/service/{name}?tag=absent") == set()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/agent/service/register",
        "/v1/agent/service/deregister/x",
        "/v1/agent/check/pass/x",
        "/v1/agent/check/update/x",
    ],
)
def test_get_on_a_put_endpoint_is_405(consul: ConsulTarget, path: str) -> None:
    answer = consul.get(path)  # what the old ianitor wrapper sent to register
    assert answer.status == 405
    assert "PUT" in answer.headers["Allow"]
    assert "GET" in answer.text


def test_put_on_a_get_endpoint_is_405_and_unknown_paths_404(consul: ConsulTarget) -> None:
    assert consul.put("/v1/catalog/services").status == 405
    assert consul.get("/v1/no/such/endpoint").status == 404


def test_bad_requests_are_400_with_a_text_reason(consul: ConsulTarget) -> None:
    bad_json = consul.put("/v1/agent/service/register", b"{not json")
    assert bad_json.status == 400 and bad_json.text.startswith("Request decode failed")
    no_name = consul.put("/v1/agent/service/register", {"Port": 1})
    assert (no_name.status, no_name.text) == (400, "Missing service name")
    bad_check = consul.put("/v1/agent/service/register", {"Name": consul.name("x"), "Check": {}})
    assert bad_check.status == 200  # an empty Check is no check at all
    no_ttl = consul.put(
        "/v1/agent/service/register", {"Name": consul.name("y"), "Check": {"Notes": "n"}}
    )
    assert no_ttl.status == 400 and "TTL" in no_ttl.text
    assert consul.get("/v1/catalog/services?index=1&wait=10").status == 400  # no unit
    assert consul.get("/v1/catalog/services?index=-1").status == 400


def test_unknown_ids_are_404(consul: ConsulTarget) -> None:
    unknown = consul.name("unknown")
    deregister = consul.put(f"/v1/agent/service/deregister/{unknown}")
    assert deregister.status == 404 and "Unknown service ID" in deregister.text
    check = consul.put(f"/v1/agent/check/pass/service:{unknown}")
    assert check.status == 404 and "Unknown check ID" in check.text


def test_deregistration_removes_service_and_checks(consul: ConsulTarget) -> None:
    name, service_id = register(consul, "gone")
    before = consul.get(f"/v1/health/service/{name}").index
    assert consul.put(f"/v1/agent/service/deregister/{service_id}").status == 200
    assert service_id not in consul.service_ids()
    assert f"service:{service_id}" not in consul.get("/v1/agent/checks").json()
    assert name not in consul.get("/v1/catalog/services").json()
    after = consul.get(f"/v1/health/service/{name}")
    assert after.json() == [] and after.index > before  # a blocked watcher wakes up


def test_ttl_expiry_turns_the_service_critical(consul: ConsulTarget) -> None:
    name, service_id = register(consul, "ttl", Check={"TTL": "1s", "Status": "passing"})
    start = time.monotonic()
    seen = consul.get(f"/v1/health/service/{name}?passing")
    assert [e["Service"]["ID"] for e in seen.json()] == [service_id]

    answer = consul.get(f"/v1/health/service/{name}?passing&index={seen.index}&wait=20s")
    elapsed = time.monotonic() - start
    assert answer.json() == [], "?passing still lists a service whose TTL expired"
    assert 0.9 <= elapsed < 10, elapsed
    check = consul.get("/v1/agent/checks").json()[f"service:{service_id}"]
    assert check["Status"] == "critical"
    assert check["Output"].startswith("TTL expired")


def test_blocking_query_returns_on_a_change(consul: ConsulTarget) -> None:
    name, _ = register(consul, "block")
    index = consul.get(f"/v1/health/service/{name}").index
    url = f"{consul.url}/v1/health/service/{name}?index={index}&wait=30s"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(http, "GET", url)
        if consul.double is not None:
            requests = consul.double.requests
            wait_until(lambda: any("index=" in path for _, path in requests), 10, "the query")
        with pytest.raises(FuturesTimeout):
            waiting.result(timeout=0.3)  # held while nothing changes
        changed_at = time.monotonic()
        register(consul, "block", ID=f"{name}-2")
        answer = waiting.result(timeout=20)
    assert time.monotonic() - changed_at < 5
    assert answer.index > index
    assert len(answer.json()) == 2


def test_blocking_query_holds_until_wait_without_a_change(consul: ConsulTarget) -> None:
    name, _ = register(consul, "hold")
    index = consul.get(f"/v1/catalog/service/{name}").index
    wait_s = 1.5
    elapsed, answer = timed(
        lambda: consul.get(f"/v1/catalog/service/{name}?index={index}&wait=1500ms")
    )
    assert wait_s * 0.95 <= elapsed <= wait_s * (1 + JITTER) + 1.0, elapsed
    assert answer.index == index


def test_index_zero_never_blocks(consul: ConsulTarget) -> None:
    elapsed, answer = timed(lambda: consul.get("/v1/catalog/services?index=0&wait=5s"))
    assert answer.status == 200 and elapsed < 2


def test_health_changes_do_not_wake_catalog_services(consul: ConsulTarget) -> None:
    _, service_id = register(consul, "catalog-index")
    index = consul.get("/v1/catalog/services").index
    assert consul.put(f"/v1/agent/check/pass/service:{service_id}").status == 200
    elapsed, answer = timed(lambda: consul.get(f"/v1/catalog/services?index={index}&wait=1s"))
    assert elapsed >= 0.95 and answer.index == index


def test_reregistration_keeps_the_check_status(consul: ConsulTarget) -> None:
    name, service_id = register(consul, "again")
    assert consul.put(f"/v1/agent/check/pass/service:{service_id}").status == 200
    register(consul, "again", ID=service_id, Tags=["new"])
    [entry] = consul.passing(name)
    assert entry["Service"]["Tags"] == ["new"]


def test_stop_and_start_keep_the_registrations(consul: ConsulTarget) -> None:
    double = consul.require_double()
    _, service_id = register(consul, "restart")
    double.stop()
    with pytest.raises(OSError):
        http("GET", consul.url + "/v1/agent/services", timeout_s=2)
    double.start()
    assert service_id in consul.service_ids()


def test_wiped_consul_sends_indexes_backwards(consul: ConsulTarget) -> None:
    double = consul.require_double()
    name, _ = register(consul, "wipe")
    for _ in range(5):
        register(consul, "wipe", Tags=[str(time.monotonic())])
    before = consul.get(f"/v1/health/service/{name}").index
    double.wipe()
    after = consul.get(f"/v1/health/service/{name}")
    assert after.json() == [] and after.index < before
    assert next_index(before, after.index) == 0  # what a watcher must do: start over


def test_long_critical_service_is_reaped() -> None:
    # Consul reaps every 30 s and never before 1 minute; this double is told to be quicker.
    with ConsulDouble(reap_interval_s=0.05, deregister_min_s=0.2) as double:
        target = ConsulTarget(double.url, double)
        critical = {"TTL": "30s", "DeregisterCriticalServiceAfter": "300ms"}
        register(target, "reaped", Check=critical)
        _, kept = register(target, "kept", Check={**critical, "Status": "passing"})
        wait_until(lambda: len(target.service_ids()) == 1, 10, "the critical service to go")
        assert target.service_ids() == {kept}


def test_go_durations() -> None:
    assert go_duration_s("10s") == 10
    assert go_duration_s("1m30s") == 90
    assert go_duration_s("250ms") == 0.25
    assert go_duration_s("0") == 0
    for bad in ("10", "", "s", "1x"):
        with pytest.raises(ValueError):
            go_duration_s(bad)
    assert go_duration(10) == "10s" and go_duration(0.25) == "250ms"


def test_next_index_follows_the_documented_rules() -> None:
    assert next_index(0, 0) == 1  # never block on 0 by mistake
    assert next_index(5, 9) == 9
    assert next_index(9, 5) == 0  # went backwards: start over


def test_agent_addresses() -> None:
    assert agent_url("10.60.1.124") == "http://10.60.1.124:8500"
    assert agent_url("consul:8501") == "http://consul:8501"
    assert agent_url("[::1]:8500") == "http://[::1]:8500"
    assert agent_url("https://consul.example:8501/") == "https://consul.example:8501"
    for bad in ("host:port", ":8500", "host:0", "ftp://x"):
        with pytest.raises(ValueError):
            agent_url(bad)


async def test_async_client_blocks_and_reads(consul: ConsulTarget) -> None:
    name = consul.name("client")
    async with ConsulClient(consul.url) as client:
        definition = {"Name": name, "ID": name, "Tags": ["t"], "Check": {"TTL": "30s"}}
        await client.register_service(definition)
        assert await client.pass_check(f"service:{name}")
        services = await client.catalog_services()
        assert services.value[name] == ["t"] and services.index >= 1
        health = await client.health_service(name, tags=["t"])
        assert [e["Service"]["ID"] for e in health.value] == [name]
        start = time.monotonic()
        held = await client.health_service(name, index=health.index, wait_s=0.5)
        assert time.monotonic() - start >= 0.45 and held.index == health.index
        assert await client.deregister_service(name)
        assert not await client.deregister_service(name)
        assert not await client.pass_check(f"service:{name}")
    async with ConsulClient("http://127.0.0.1:1") as unreachable:
        with pytest.raises(ConsulError, match="cannot reach Consul"):
            await unreachable.catalog_services()


def test_py_consul_works_against_it(consul: ConsulTarget) -> None:
    host, port = consul.hostport.rsplit(":", 1)
    client = py_consul.Consul(host=host, port=int(port))
    name = consul.name("py-consul")
    check = py_consul.Check.ttl("30s")
    assert client.agent.service.register(name, service_id=name, tags=["x"], port=1, check=check)
    assert client.agent.check.ttl_pass(f"service:{name}")
    _, entries = client.health.service(name, passing=True)
    assert [entry["Service"]["ID"] for entry in entries] == [name]
    _, services = client.catalog.services()
    assert services[name] == ["x"]
    assert client.agent.service.deregister(name)

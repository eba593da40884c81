"""Rollouts through the REST API: started with a token, steered, and ended by manual actions."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.apache_kafka import Broker
from tests.support.api_client import TOKEN, Client, quiet_config, refused
from tests.support.harness import RouterThread, handler
from tests.support.kafkatools import unique

pytestmark = pytest.mark.one_broker  # the subject is the rollouts API, not the broker


@pytest.fixture(scope="module")
def running(broker: Broker) -> Iterator[RouterThread]:
    """A running router whose API takes the test token."""
    router = RouterThread(quiet_config(broker.bootstrap_servers, {"tokens": [TOKEN]})).start()
    yield router
    router.stop()


@pytest.fixture
def api(running: RouterThread) -> Client:
    """A client with the token."""
    return Client.of(running, TOKEN)


def pair(api: Client, kind: str = "canary") -> tuple[str, str]:
    """A production handler and a candidate of a fresh group; their node ids."""
    topic, name = unique("topic"), unique("face")
    ids = []
    for port, fields in ((5151, {}), (5152, {"model_type": kind, "version": "2", "node": "1"})):
        reply = api.post("/api/handlers", handler(name, topic, port, **fields))
        assert reply.status == 201, reply.text
        ids.append(str(reply.json()["node_id"]))
    return ids[0], ids[1]


def test_a_rollout_starts_with_a_token_and_sets_the_first_step(
    running: RouterThread, api: Client
) -> None:
    production, canary = pair(api)
    body = {"node_id": canary, "steps": [10, 50, 100], "step_wait": "5m", "min_events": 200}
    refused(Client.of(running).post("/api/rollouts", body), 401)
    reply = api.post("/api/rollouts", body)
    assert reply.status == 201, reply.text
    view = reply.json()
    assert (view["status"], view["step"], view["steps"], view["share"]) == (
        "running",
        0,
        [10, 50, 100],
        0.1,
    )
    assert view["options"]["step_wait_s"] == 300 and view["options"]["min_events"] == 200
    assert view["options"]["max_error_rate_increase"] == 0.01  # the safe default
    assert [d["outcome"] for d in view["decisions"]] == ["start"]
    assert view["current"]["outcome"] == "hold" and view["current"]["rule"] == "collecting"
    assert api.views()[canary]["traffic"] == 0.1
    refused(api.post("/api/rollouts", body), 409, "already has rollout")
    listed = api.get(f"/api/rollouts?node_id={canary}").json()
    assert [r["id"] for r in listed] == [view["id"]]
    assert (
        api.get(f"/api/rollouts/{view['id']}")
        .json()["decisions"][0]["reason"]
        .startswith("started: 10 %")
    )
    refused(api.post("/api/rollouts", {"node_id": production}), 409, "a rollout takes a canary")


def test_bad_options_are_refused_in_one_line(api: Client) -> None:
    _, canary = pair(api)
    refused(api.post("/api/rollouts", {"node_id": canary, "steps": [50, 20]}), 422, "steps")
    refused(api.post("/api/rollouts", {"node_id": canary, "step_wait": "soon"}), 422, "duration")
    refused(api.post("/api/rollouts", {"node_id": canary, "speed": 2}), 422, "speed")
    refused(api.get("/api/rollouts/999999"), 404, "no rollout 999999")


def test_pause_resume_and_abort(api: Client) -> None:
    _, canary = pair(api)
    rollout = api.post("/api/rollouts", {"node_id": canary}).json()["id"]
    assert api.post(f"/api/rollouts/{rollout}/pause").json()["status"] == "paused"
    refused(api.post(f"/api/rollouts/{rollout}/pause"), 409, "paused")
    assert api.post(f"/api/rollouts/{rollout}/resume").json()["status"] == "running"
    aborted = api.post(f"/api/rollouts/{rollout}/abort").json()
    assert aborted["status"] == "aborted" and aborted["ended_at"]
    assert [d["outcome"] for d in aborted["decisions"]] == ["start", "pause", "resume", "abort"]
    assert api.views()[canary]["traffic"] == 0.0
    refused(api.post(f"/api/rollouts/{rollout}/resume"), 409, "aborted")


@pytest.mark.parametrize(
    "action",
    ["traffic", "promote", "disable", "demote"],
)
def test_a_manual_action_on_the_group_ends_its_rollout(api: Client, action: str) -> None:
    production, canary = pair(api)
    rollout = api.post("/api/rollouts", {"node_id": canary}).json()["id"]
    if action == "traffic":
        assert api.put(f"/api/handlers/{canary}/traffic", {"traffic": 0.3}).status == 200
    elif action == "demote":
        seen = api.views()[production]
        replica = api.post("/api/handlers", handler(seen["name"], seen["event"], 5160, node="9"))
        assert replica.status == 201, replica.text
        assert api.post(f"/api/handlers/{production}/demote").status == 200
    else:
        target = canary if action != "disable" else production
        assert api.post(f"/api/handlers/{target}/{action}").status == 200
    view = api.get(f"/api/rollouts/{rollout}").json()
    assert view["status"] == "ended-by-hand"
    assert view["decisions"][-1]["outcome"] == "ended-by-hand"
    assert f"{action} of " in view["reason"] and "by hand" in view["reason"]
    if action == "traffic":
        assert api.views()[canary]["traffic"] == 0.3  # the operator's share stands


def test_the_command_line_starts_shows_and_aborts_a_rollout(
    running: RouterThread, api: Client, tmp_path: Path
) -> None:
    _, canary = pair(api)
    config = tmp_path / "logistik.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": running.config.database.url}}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "logistik", "rollout", "--config", str(config), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    started = cli("start", canary, "--steps", "5,100", "--step-wait", "2m", "--on-slow", "hold")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("rollout ") and "started: 5% of the events" in started.stdout
    shown = cli("status", canary)
    assert shown.returncode == 0, shown.stderr
    assert "running" in shown.stdout and "collecting" in shown.stdout and "canary" in shown.stdout
    listed = cli("list", "--active", "--json")
    rows: list[dict[str, Any]] = yaml.safe_load(listed.stdout)
    assert canary in [r["node_id"] for r in rows]
    assert cli("abort", canary).stdout.strip().endswith("aborted")
    bad = cli("start", canary, "--steps", "50,20")
    assert bad.returncode == 2 and "steps" in bad.stderr
    assert "Example:" in cli("start", "--help").stdout

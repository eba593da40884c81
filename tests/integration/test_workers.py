"""`logistik run --workers N`: N routers in one group, one front showing all, none lost."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from logistik.process.workers import run_pool
from tests.support.harness import RouterProcess, handler, make_config
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer, Reply, wait_until

StartProcess = Callable[[dict[str, Any]], RouterProcess]

pytestmark = pytest.mark.one_broker  # the subject is the processes, not the broker


def readiness(port: int) -> dict[str, Any]:
    """The front's /readyz (503 included); empty while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except OSError:
        return {}
    found: dict[str, Any] = orjson.loads(body)
    return found


def worker_pid(port: int, index: int) -> int | None:
    """The pid the front shows for a worker while that worker is ready."""
    check = readiness(port).get("checks", {}).get(f"worker {index}", {})
    found = re.match(r"pid (\d+), consuming", check.get("detail", ""))
    return int(found.group(1)) if check.get("ok") and found else None


def metric(port: int, line_start: str) -> float | None:
    """One sample of the front's /metrics, by the start of its line."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def published_by_worker(log: str) -> Counter[str]:
    """How many answers each worker logged as published."""
    return Counter(re.findall(r"\[worker (\d+)\] logistik\.events: .* published", log))


def two_workers(servers: str, topic: str, model: ModelServer) -> tuple[dict[str, Any], int]:
    config = make_config(servers, [handler("m", topic, model.port)])
    config["workers"] = 2
    config["event_log_level"] = "info"  # each answer's line names the worker that published it
    return config, config["web"]["port"]


def test_two_workers_share_the_partitions_and_the_front_counts_both(
    servers: str, model_server: Callable[..., ModelServer], router_process: StartProcess
) -> None:
    topic = unique("events")
    # Retry topics are read by a group of their own: whatever the join order, each worker
    # holds 2 of the 4 event partitions (not the retry topic's 3 and 1 of these, as when one
    # group read both).
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed", partitions=4)
    model = model_server()
    config, port = two_workers(servers, topic, model)
    sent = [event(actor=f"actor-{i}") for i in range(400)]
    with TopicReader(servers, f"{topic}-results") as reader:
        pool = router_process(config)
        wait_until(lambda: readiness(port).get("ready") is True, 60, "both workers ready")
        wait_until(lambda: pool.workers_assigned(2), 60, "partitions for both workers")
        produce(servers, topic, sent, spread=4)
        records = reader.wait_for(f"{topic}-results", 400, timeout_s=60)
        events_in = f'logistik_topic_events_total{{topic="{topic}"}}'
        # The front shows the sum of both workers' figures within a second or two.
        wait_until(lambda: metric(port, events_in) == 400, 10, "the front to count 400 events")
        # A worker's figures are a snapshot: one taken while its events were in flight counts
        # them in and not yet called, so the calls are waited for on their own.
        calls = "logistik_handler_requests_total{"
        wait_until(lambda: metric(port, calls) == 400, 10, "the front to count 400 calls")
        pool.signal(signal.SIGTERM)
        assert pool.wait(60) == 0, pool.log()
    assert sorted(r.json()["id"] for r in records) == sorted(e["id"] for e in sent)
    log = pool.log()
    shares = published_by_worker(log)
    assert set(shares) == {"0", "1"} and sum(shares.values()) == 400, shares
    assert log.count("stopped: offsets of finished events committed") == 2


def test_a_worker_killed_mid_stream_is_restarted_and_nothing_is_lost(
    servers: str, model_server: Callable[..., ModelServer], router_process: StartProcess
) -> None:
    topic = unique("events")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed", partitions=4)
    # Past its 150th call the model holds its answers until the kill: the stream cannot end
    # before it.
    held = threading.Event()
    model = model_server(
        lambda ev, n: Reply(200, {"id": ev["id"]}, delay_s=0.005, gate=held if n > 150 else None)
    )
    config, port = two_workers(servers, topic, model)
    sent = [event(actor=f"actor-{i}") for i in range(600)]
    with TopicReader(servers, f"{topic}-results", f"{topic}-failed") as reader:
        pool = router_process(config)
        wait_until(lambda: readiness(port).get("ready") is True, 60, "both workers ready")
        wait_until(lambda: pool.workers_assigned(2), 60, "partitions for both workers")
        first_pid = worker_pid(port, 1)
        assert first_pid is not None
        produce(servers, topic, sent, spread=4)
        wait_until(lambda: len(reader.on(f"{topic}-results")) >= 100, 60, "first answers")
        os.kill(first_pid, signal.SIGKILL)
        held.set()
        assert len(reader.on(f"{topic}-results")) < len(sent), "nothing was left to lose"
        wait_until(lambda: worker_pid(port, 1) not in (None, first_pid), 60, "worker 1 restarted")
        wait_until(
            lambda: (
                {r.json()["id"] for r in reader.on(f"{topic}-results")} >= {e["id"] for e in sent}
            ),
            90,
            "every event answered",
        )
        pool.signal(signal.SIGTERM)
        assert pool.wait(60) == 0, pool.log()
        assert reader.on(f"{topic}-failed") == []
    assert "worker 1 was killed (signal 9); restarting it in 1 s" in pool.log()


async def test_a_worker_that_keeps_exiting_stops_the_pool_with_exit_code_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Each worker exits at once (exit code 2: no config file); restarted five times within
    # ten minutes, the sixth exit stops the pool.
    argv = ["--config", str(tmp_path / "missing.yaml")]
    code = await asyncio.wait_for(run_pool(argv, 2, 1.0, asyncio.Event(), (0.0,)), 100)
    assert code == 1
    assert re.search(r"worker \d exited with code 2, the 6th time in 10 minutes", caplog.text)
    assert caplog.text.count("exited with code 2; restarting it in 0 s") >= 5

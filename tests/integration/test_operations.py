"""Operations: Prometheus metrics match what models saw; readiness follows the broker."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from logistik.kafka.embedded import EmbeddedBroker, free_port
from tests.support.api_client import sample
from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer, Reply, wait_until


def fetch(running: RouterThread, path: str) -> tuple[int, str]:
    """GET a path of the router's web server: status and text."""
    url = f"http://127.0.0.1:{running.config.web.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_match_what_the_models_saw(
    servers: str,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    topic = unique("metrics")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    flaky_calls: list[int] = []

    def flaky(ev: dict[str, Any], count: int) -> Reply:
        flaky_calls.append(count)
        return Reply(503) if count % 3 == 0 else Reply(200, {"id": ev["id"]}, delay_s=0.01)

    model = model_server(flaky)
    running = router(make_config(servers, [handler("face", topic, model.port, retries=5)]))
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, [event() for _ in range(30)])
        reader.wait_for(f"{topic}-results", 30)
    # An answer is counted as published once the broker acknowledged it, which may be after
    # the reader has read it.
    wait_until(
        lambda: (
            sample(fetch(running, "/metrics")[1], "logistik_topic_published_total", topic=topic)
            == 30
        ),
        what="30 answers counted as published",
    )
    status, text = fetch(running, "/metrics")
    assert status == 200
    labels = {
        "node_id": "face-127.0.0.1-model-0",
        "name": "face",
        "model_type": "model",
        "topic": topic,
    }
    assert sample(text, "logistik_handler_requests_total", **labels) == model.count
    assert sample(text, "logistik_handler_answers_total", outcome="ok", **labels) == 30
    errors = sample(text, "logistik_handler_answers_total", outcome="error", **labels)
    assert errors == model.count - 30 > 0
    assert sample(text, "logistik_handler_retries_total", **labels) == errors
    assert sample(text, "logistik_handler_latency_seconds_count", **labels) == model.count
    assert (
        sample(text, "logistik_handler_latency_seconds_bucket", le="+Inf", **labels) == model.count
    )
    assert (
        sample(text, "logistik_handler_latency_seconds_bucket", le="0.005", **labels) < model.count
    )  # every ok answer took at least 10 ms
    assert sample(text, "logistik_topic_events_total", topic=topic) == 30
    assert sample(text, "logistik_topic_published_total", topic=topic) == 30
    assert "process_resident_memory_bytes" in text


def test_readiness_follows_the_broker_and_check_exits_accordingly(
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    port = free_port()
    broker = EmbeddedBroker(port).start()
    try:
        topic = unique("ready")
        model = model_server()
        running = router(make_config(broker.bootstrap_servers, [handler("m", topic, model.port)]))
        base = f"http://127.0.0.1:{running.config.web.port}"

        def check() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "logistik", "check", "--url", base],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        wait_until(lambda: fetch(running, "/readyz")[0] == 200, what="ready")
        assert (check().returncode, check().stdout) == (0, "ready\n")
        broker.stop()
        wait_until(lambda: fetch(running, "/readyz")[0] == 503, what="not ready")
        failed = check()
        assert failed.returncode == 1
        assert failed.stderr.startswith(
            f"not ready: broker: cannot reach the Kafka broker at {broker.bootstrap_servers}"
        )
        broker = EmbeddedBroker(port).start()
        wait_until(lambda: fetch(running, "/readyz")[0] == 200, timeout_s=30, what="ready again")
        assert fetch(running, "/healthz") == (200, '{"status":"ok"}')
    finally:
        broker.stop()


def test_statsd_gets_a_timing_and_an_outcome_per_call(
    servers: str,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    topic = unique("statsd")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    model = model_server()
    router(
        make_config(
            servers,
            [handler("face", topic, model.port)],
            statsd={"port": receiver.getsockname()[1], "prefix": "lk"},
        )
    )
    produce(servers, topic, [event() for _ in range(3)])
    lines: list[str] = []
    try:
        while len(lines) < 6:
            lines += receiver.recv(4096).decode().splitlines()
    finally:
        receiver.close()
    assert (
        sorted(line.split(":")[0] for line in lines) == ["lk.face.latency"] * 3 + ["lk.face.ok"] * 3
    )
    assert all(line.endswith("|ms") for line in lines if "latency" in line)

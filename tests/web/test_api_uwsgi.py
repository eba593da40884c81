"""A model served by a real uWSGI: its own figures, read from its stats server, in the API."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from logistik.handler import Handler
from logistik.kafka.embedded import free_port
from logistik.web.uwsgi import STATS_PORT_OFFSET, UwsgiStats, summarise
from tests.support.api_client import Client
from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer, wait_until

pytestmark = pytest.mark.one_broker  # the subject is uWSGI's figures, not the broker

APP = Path(__file__).parent.parent / "support" / "uwsgi_app.py"


def _ports() -> tuple[int, int]:
    """A free port whose port + 100 is free too."""
    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + STATS_PORT_OFFSET))
            except OSError:
                continue
        return port, port + STATS_PORT_OFFSET


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def uwsgi_model(tmp_path: Path) -> Iterator[int]:
    """A real uWSGI serving tests/uwsgi_app.py, with its stats server at port + 100."""
    binary = shutil.which("uwsgi")
    if binary is None:
        pytest.skip("the uwsgi binary is not installed (pip install uwsgi)")
    port, stats = _ports()
    with open(tmp_path / "uwsgi.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "--http",
                f"127.0.0.1:{port}",
                "--wsgi-file",
                str(APP),
                "--stats",
                f"127.0.0.1:{stats}",
                "--stats-http",
                "--master",
                "--processes",
                "1",
                "--need-app",
                "--die-on-term",
                "--disable-logging",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{stats}/"), what="uWSGI's stats server")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def test_handlers_show_the_models_own_uwsgi_figures(
    servers: str,
    uwsgi_model: int,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    topic = unique("uwsgi")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    plain = model_server()
    running = router(
        make_config(
            servers, [handler("wsgi", topic, uwsgi_model), handler("plain", topic, plain.port)]
        )
    )
    api = Client.of(running)
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, [event() for _ in range(5)])
        reader.wait_for(f"{topic}-results", 10)
    wait_until(
        lambda: (api.views()["wsgi-127.0.0.1-model-0"]["uwsgi"] or {}).get("requests") == 5,
        what="uWSGI's request count",
    )
    views = api.views()
    figures = views["wsgi-127.0.0.1-model-0"]["uwsgi"]
    assert figures["exceptions"] == 0 and figures["status"] == "idle"
    assert figures["uptime_s"] >= 0 and isinstance(figures["load"], int)
    assert set(figures) == {"requests", "exceptions", "uptime_s", "status", "load"}
    assert views["wsgi-127.0.0.1-model-0"]["figures"]["requests"] == 5
    assert views["plain-127.0.0.1-model-0"]["uwsgi"] is None
    assert api.get("/api/handlers/wsgi-127.0.0.1-model-0").json()["uwsgi"]["requests"] == 5


def test_stats_are_fetched_once_for_a_few_seconds(uwsgi_model: int) -> None:
    wsgi = Handler(name="wsgi", event="t", endpoint="127.0.0.1", port=uwsgi_model, return_to="r")
    closed = Handler(
        name="closed", event="t", endpoint="127.0.0.1", port=free_port(), return_to="r"
    )
    beyond = Handler(name="high", event="t", endpoint="127.0.0.1", port=65500, return_to="r")

    async def twice() -> list[dict[str, Any]]:
        stats = UwsgiStats()
        first = await stats.for_handlers([wsgi, closed, beyond])
        second = await stats.for_handlers([wsgi])
        return [first, second]

    first, second = asyncio.run(twice())
    assert first[wsgi.node_id] is not None and second[wsgi.node_id] is first[wsgi.node_id]
    assert first[closed.node_id] is None and first[beyond.node_id] is None


def test_summarise_a_stats_document() -> None:
    document = {
        "load": 3,
        "workers": [
            {"requests": 10, "exceptions": 1, "status": "idle", "last_spawn": 1000, "avg_rt": 5},
            {"requests": 5, "exceptions": 0, "status": "busy", "last_spawn": 1500, "avg_rt": 7},
        ],
    }
    assert summarise(document, 2000.0) == {
        "requests": 15,
        "exceptions": 1,
        "uptime_s": 1000.0,
        "status": "busy",
        "load": 3,
    }
    assert summarise({"workers": [{"status": "cheap"}]}, 0.0) == {
        "requests": 0,
        "exceptions": 0,
        "uptime_s": None,
        "status": "cheap",
        "load": None,
    }
    broken: list[Any] = [
        None,
        [],
        {"workers": "x"},
        {"workers": [1]},
        {"workers": [{"requests": "x"}]},
    ]
    for document in broken:
        assert summarise(document, 0.0) is None

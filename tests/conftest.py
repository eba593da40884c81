"""Shared fixtures: real brokers per session (Tansu, Apache Kafka), model servers and routers.

LK_TEST_BROKER=tansu|kafka|both (default both) chooses the brokers; a test that uses the broker
runs once on each, `@pytest.mark.brokers("tansu")` keeps a test to the brokers it names, and
`@pytest.mark.one_broker` runs a test whose subject is not the broker on one of them (Apache
Kafka when both are chosen: its waiting fetches answer at once, so the test takes less time).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from logistik.kafka.embedded import EmbeddedBroker
from tests.support.apache_kafka import ApacheKafka, Broker
from tests.support.consul_fixtures import consul  # noqa: F401
from tests.support.databases import PostgresServer, own_postgres  # noqa: F401
from tests.support.harness import RouterProcess, RouterThread
from tests.support.kafkatools import QUICK_JOIN_SERVERS
from tests.support.models import Behaviour, ModelServer, echo
from tests.support.system import install_hint, missing_packages

pytest_plugins = ["tests.support.markers"]

BROKERS = ("tansu", "kafka")
BROKER_LOGS = Path(__file__).resolve().parents[1] / "test-artifacts" / "kafka"


def chosen_brokers() -> list[str]:
    """The brokers LK_TEST_BROKER asks for."""
    value = os.environ.get("LK_TEST_BROKER", "both")
    if value == "both":
        return list(BROKERS)
    if value not in BROKERS:
        raise pytest.UsageError(f"LK_TEST_BROKER={value}: expected tansu, kafka or both")
    return [value]


def pytest_report_header() -> str | None:
    """Say which system packages some tests need and this machine lacks, with the command."""
    missing = missing_packages()
    if not missing:
        return None
    return f"missing for some tests: {', '.join(missing)}; install them with: {install_hint()}"


def pytest_configure(config: pytest.Config) -> None:
    """Register the `brokers` marker."""
    config.addinivalue_line(
        "markers", "brokers(*names): run the test only on these brokers (tansu, kafka)"
    )
    config.addinivalue_line(
        "markers", "one_broker: run the test on one chosen broker (Apache Kafka when both are)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses the broker once per chosen broker it allows."""
    if "broker" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("brokers")
    names = [name for name in chosen_brokers() if marker is None or name in marker.args]
    if metafunc.definition.get_closest_marker("one_broker") is not None:
        names = ["kafka"] if "kafka" in names else names[:1]
    metafunc.parametrize("broker", names, indirect=True, scope="session")


@pytest.fixture(scope="session")
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    """A real broker for the whole session: Tansu or Apache Kafka, per the test's parameter."""
    name: str = request.param
    log = tmp_path_factory.mktemp(name) / f"{name}.log"
    running: Broker = EmbeddedBroker(log_path=log) if name == "tansu" else ApacheKafka(log)
    try:
        with running:
            if name == "tansu":
                QUICK_JOIN_SERVERS.add(running.bootstrap_servers)
            yield running
    finally:
        if log.exists():
            BROKER_LOGS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, BROKER_LOGS / log.name)


@pytest.fixture
def servers(broker: Broker) -> str:
    """The broker's bootstrap address."""
    return broker.bootstrap_servers


@pytest.fixture
def model_server() -> Iterator[Callable[..., ModelServer]]:
    """Start real HTTP model servers; each is stopped after the test."""
    started: list[ModelServer] = []

    def start(
        behaviour: Behaviour = echo, path: str = "/predict", info: dict[str, Any] | None = None
    ) -> ModelServer:
        server = ModelServer(behaviour, path, info).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def router() -> Iterator[Callable[[dict[str, Any]], RouterThread]]:
    """Start logistik's router in-process; it is stopped gracefully after the test."""
    started: list[RouterThread] = []

    def start(config: dict[str, Any]) -> RouterThread:
        running = RouterThread(config).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def router_process(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], RouterProcess]]:
    """Start `logistik run` as a subprocess; killed after the test if still running."""
    started: list[RouterProcess] = []

    def start(config: dict[str, Any]) -> RouterProcess:
        process = RouterProcess(config, tmp_path).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each kind: a SQLite file, and a database on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'logistik.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()

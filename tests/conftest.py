"""Shared fixtures: one real Tansu broker per session, model servers and routers per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from logistik.kafka.embedded import EmbeddedBroker
from tests.support.consul_fixtures import consul  # noqa: F401
from tests.support.databases import PostgresServer, own_postgres  # noqa: F401
from tests.support.harness import RouterProcess, RouterThread
from tests.support.models import Behaviour, ModelServer, echo

pytest_plugins = ["tests.support.markers"]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (Tansu) for the whole session."""
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture
def servers(broker: EmbeddedBroker) -> str:
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

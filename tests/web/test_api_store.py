"""The API and readiness while the handler store fails: 503 with the reason, retries shown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from logistik.control.handler_service import with_service
from logistik.kafka.embedded import EmbeddedBroker
from tests.support.api_client import TOKEN, Client, quiet_config, refused
from tests.support.databases import PostgresServer
from tests.support.harness import RouterThread, handler
from tests.support.kafkatools import unique
from tests.support.models import wait_until

pytestmark = pytest.mark.one_broker  # the subject is the store, not the broker


def readiness(api: Client) -> tuple[int, dict[str, Any]]:
    """/readyz: its status and checks."""
    reply = api.get("/readyz")
    return reply.status, reply.json()["checks"]


def test_a_database_outage_is_a_503_with_the_reason_and_the_follower_retrying_is_shown(
    broker: EmbeddedBroker, own_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = quiet_config(broker.bootstrap_servers, {"tokens": [TOKEN]})
    node = "m-127.0.0.1-model-0"
    config["database"] = {"url": own_postgres.create_database()}
    config["discovery"] = {"refresh_s": 0.2, "handlers": [handler("m", unique("t"), 5151)]}
    running = RouterThread(config).start()
    try:
        api = Client.of(running, TOKEN)
        assert api.get("/api/handlers").status == 200
        own_postgres.pause()
        refused(api.get("/api/handlers"), 503, "the handler store cannot read handlers: ")
        refused(api.post(f"/api/handlers/{node}/disable"), 503, "the handler store cannot ")
        wait_until(
            lambda: api.get("/api/status").json()["store"]["error"] is not None,
            what="the follower's error in the status",
        )
        status, checks = readiness(api)
        assert status == 503
        assert checks["store follower"]["detail"].startswith("retrying with back-off: ")
        own_postgres.resume()
        wait_until(lambda: readiness(api)[0] == 200, timeout_s=60, what="ready again")
        assert api.get("/api/status").json()["store"]["error"] is None
        assert api.post(f"/api/handlers/{node}/disable").status == 200
        wait_until(
            lambda: f"no longer routing to {node}" in caplog.text,
            what="the disable followed after the outage",
        )
    finally:
        running.stop()


def test_a_read_only_store_is_a_503_saying_so(broker: EmbeddedBroker, tmp_path: Path) -> None:
    path = tmp_path / "logistik.db"
    asyncio.run(with_service(f"sqlite:///{path}", lambda service: service.find()))  # migrated
    config = quiet_config(broker.bootstrap_servers, {"tokens": [TOKEN]})
    config["database"] = {"url": f"sqlite:///file:{path}?mode=ro&uri=true"}
    running = RouterThread(config).start()
    try:
        api = Client.of(running, TOKEN)
        reply = api.post("/api/handlers", handler("m", "t", 5151))
        refused(reply, 503, "the handler store cannot add the handler: attempt to write a readonly")
        assert api.get("/api/handlers").json() == []
    finally:
        running.stop()

"""The handler store on SQLite and on a real PostgreSQL: migrations, sync, admin state."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from logistik.config import KafkaConfig
from logistik.control.follower import StoreFollower
from logistik.control.handler_service import HandlerService
from logistik.control.store import Store, async_url
from logistik.errors import HandlerNotFoundError, StoreError, StoreUnavailableError
from logistik.handler import Handler
from logistik.kafka.embedded import free_port
from logistik.routing.registry import Registry
from tests.support.databases import PostgresServer
from tests.support.models import wait_until_async


def make(name: str = "face", **fields: Any) -> Handler:
    """A handler with the required fields filled."""
    base = {
        "name": name,
        "event": "detect",
        "endpoint": "10.0.0.1",
        "port": 5000,
        "return_to": "detect-results",
    }
    return Handler.model_validate({**base, **fields})


async def test_open_migrates_an_empty_database_to_the_newest_revision(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        assert await store.revision() == "0005"
        assert await store.records() == []
        await store.migrate()  # a second open changes nothing
        assert await store.revision() == "0005"
    finally:
        await store.close()


OPEN_AND_CLOSE = """
import asyncio, sys
from logistik.control.store import Store

async def main():
    store = await Store.open(sys.argv[1])
    print(await store.revision())
    await store.close()

asyncio.run(main())
"""


def test_processes_that_open_a_new_database_at_once_all_find_it_migrated(
    database_url: str,
) -> None:
    # As the workers of `logistik run --workers N` do: one migrates, the others wait for it.
    opening = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_CLOSE, database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=60) for process in opening]
    assert [process.returncode for process in opening] == [0] * 4, outputs
    assert [out.strip() for out, _ in outputs] == ["0005"] * 4


async def test_upgrade_keeps_every_row(database_url: str) -> None:
    engine = create_async_engine(async_url(database_url))
    store = Store(engine)
    await store.migrate("0001")
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        for i in range(3):
            await connection.execute(
                text(
                    "INSERT INTO handlers (node_id, name, service_id, group_id, event, endpoint, "
                    "hostname, port, path, method, version, node, model_type, enabled, traffic, "
                    "environment, tags, consul_service_id, retired, disabled_by_admin, source, "
                    "created_at, updated_at) VALUES (:node_id, 'face', 'face', 'face', 'detect', "
                    "'h', 'h', 5000, '/', 'POST', 'v1', :node, 'model', true, 0, '', '[]', '', "
                    ":retired, false, 'consul', :now, :now)"
                ),
                {"node_id": f"face-h-model-{i}", "node": str(i), "retired": i == 1, "now": now},
            )
    await store.migrate()
    try:
        records = await store.records()
        assert [r.node_id for r in records] == [f"face-h-model-{i}" for i in range(3)]
        assert [r.handler.retired for r in records] == [False, True, False]
        assert {(r.decoy_compared, r.decoy_agreed) for r in records} == {(0, 0)}
    finally:
        await store.close()


async def test_sync_adds_updates_and_marks_missing_handlers_down(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        a, b = make(node="1"), make(node="2")
        assert await store.sync([a, b], "consul") == 2
        assert await store.sync([a, b], "consul") == 0
        await store.sync([a.model_copy(update={"version": "2"})], "consul")
        by_id = {r.node_id: r for r in await store.records()}
        assert by_id[a.node_id].handler.version == "2"
        assert by_id[b.node_id].state == "gone"
        assert by_id[b.node_id].handler.active is False
        await store.sync([a, b], "consul")
        assert (await store.get(b.node_id)).state == "active"
        await store.sync(
            [a.model_copy(update={"enabled": False})],
            "consul",
            problems={a.node_id: "health check critical"},
        )
        down = await store.get(a.node_id)
        assert (down.state, down.problem) == ("down", "health check critical")
        await store.sync([], "static")  # another source never touches consul's handlers
        assert (await store.get(b.node_id)).state == "gone"
        static = make("face", node="9")
        await store.sync([static], "static")
        await store.sync([], "static", delete_missing=True)
        with pytest.raises(HandlerNotFoundError):
            await store.get(static.node_id)
    finally:
        await store.close()


async def test_admin_state_survives_rediscovery(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        canary = make("face", node="1", model_type="canary", traffic=0.1)
        old = make("face", node="2")
        await store.sync([canary, old], "consul")
        await store.set_admin(canary.node_id, admin_model_type="model", admin_traffic=0.5)
        await store.set_admin(old.node_id, retired=True, disabled_by_admin=True)
        await store.sync([canary, old], "consul")  # discovery still says canary, enabled
        promoted = await store.get(canary.node_id)
        assert promoted.handler.model_type == "model"
        assert promoted.declared_model_type == "canary"
        assert promoted.handler.traffic == 0.5
        assert promoted.node_id == canary.node_id  # identity does not change on promote
        retired = await store.get(old.node_id)
        assert retired.state == "retired" and not retired.handler.active
    finally:
        await store.close()


async def test_promotion_is_seen_whole_by_a_router_reloading_meanwhile(database_url: str) -> None:
    store = await Store.open(database_url)
    reader = await Store.open(database_url)  # as another router process would read
    try:
        old = make("face", version="1")
        new = make("face", version="2", node="1", model_type="canary", traffic=0.0)
        await store.sync([old, new], "static")
        states: list[frozenset[str]] = []
        done = asyncio.Event()

        async def reload() -> None:
            while not done.is_set():
                records = await reader.records()
                production = (r.node_id for r in records if r.handler.model_type == "model")
                states.append(frozenset(production))

        reloading = asyncio.create_task(reload())
        await wait_until_async(lambda: len(states) >= 3)
        await HandlerService(store).promote(new.node_id)
        seen = len(states)
        await wait_until_async(lambda: len(states) >= seen + 3)
        done.set()
        await reloading
        assert set(states) == {frozenset({old.node_id}), frozenset({new.node_id})}
        # All or nothing: one unknown handler leaves the others as they were.
        with pytest.raises(HandlerNotFoundError):
            await store.set_admin_many(
                [(old.node_id, {"retired": True}), ("face-nowhere-model-9", {"retired": True})]
            )
        assert not (await store.get(old.node_id)).handler.retired
    finally:
        await reader.close()
        await store.close()


async def test_add_edit_delete_and_decoy_counts(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        handler = make("shadow", model_type="decoy", return_to=None)
        await store.add(handler)
        with pytest.raises(StoreError, match="already exists"):
            await store.add(handler)
        edited = await store.edit(handler.node_id, {"timeout": 2.5, "version": "9"})
        assert (edited.handler.timeout_s, edited.handler.version) == (2.5, "9")
        await store.count_decoy({handler.node_id: (10, 7)})
        await store.count_decoy({handler.node_id: (10, 9)})
        record = await store.get(handler.node_id)
        assert (record.decoy_compared, record.decoy_agreed, record.agreement) == (20, 16, 0.8)
        await store.delete(handler.node_id)
        with pytest.raises(HandlerNotFoundError, match=f"no handler {handler.node_id}"):
            await store.get(handler.node_id)
    finally:
        await store.close()


async def test_unreachable_database_is_one_line() -> None:
    port = free_port()
    with pytest.raises(StoreUnavailableError) as caught:
        await Store.open(f"postgresql://logistik:secret@127.0.0.1:{port}/logistik")
    message = str(caught.value)
    assert message.startswith(
        f"cannot open the store at postgresql://logistik:***@127.0.0.1:{port}/logistik: "
    )
    assert "secret" not in message and "\n" not in message


async def test_unreachable_database_named_with_a_query_password_is_masked() -> None:
    port = free_port()
    url = f"postgresql://logistik@127.0.0.1:{port}/logistik?password=pa55word-in-query"
    with pytest.raises(StoreUnavailableError) as caught:
        await Store.open(url)
    message = str(caught.value)
    assert message.startswith(
        f"cannot open the store at postgresql://logistik@127.0.0.1:{port}/logistik?password=***: "
    )
    assert "pa55word" not in message


async def test_a_malformed_database_url_is_one_line_without_the_url() -> None:
    with pytest.raises(StoreError) as caught:
        await Store.open("postgresql://user:secret@host:port/db")
    assert str(caught.value).startswith("database.url: not a database URL logistik can use")
    assert "secret" not in str(caught.value)


async def test_a_read_only_database_is_one_line_saying_what_could_not_be_done(
    tmp_path: Path,
) -> None:
    path = tmp_path / "logistik.db"
    writable = await Store.open(f"sqlite:///{path}")
    await writable.sync([make(node="1")], "static")
    await writable.close()
    store = await Store.open(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        assert [r.node_id for r in await store.records()] == [make(node="1").node_id]
        with pytest.raises(StoreUnavailableError) as caught:
            await HandlerService(store).disable(make(node="1").node_id)
        assert str(caught.value) == (
            "the handler store cannot change handlers: attempt to write a readonly database"
        )
    finally:
        await store.close()


async def test_a_stored_row_that_is_no_valid_handler_is_shown_invalid_and_never_routed(
    database_url: str,
) -> None:
    store = await Store.open(database_url)
    try:
        good = make(node="1")
        await store.sync([good], "consul")
        async with store._engine.begin() as connection:  # as a row written before the rules
            await connection.execute(
                text(
                    "INSERT INTO handlers (node_id, name, service_id, group_id, event, endpoint, "
                    "hostname, port, path, method, version, node, model_type, enabled, traffic, "
                    "environment, tags, consul_service_id, retired, disabled_by_admin, source, "
                    "registered, decoy_compared, decoy_agreed, created_at, updated_at) VALUES "
                    "('face-h-model-2', 'face', 'face', 'face', 'detect', '127.0.0.2:9/x#', 'h', "
                    "5000, '/', 'GET /x', '', '2', 'model', true, 0, '', '[]', '', false, false, "
                    "'consul', true, 0, 0, :now, :now)"
                ),
                {"now": datetime.now(UTC)},
            )
        by_id = {r.node_id: r for r in await store.records()}
        broken = by_id["face-h-model-2"]
        assert broken.state == "invalid"
        assert broken.problem is not None
        assert "endpoint: not a host name or IP address" in broken.problem
        assert "method: must be one of GET, POST, PUT, PATCH, DELETE" in broken.problem
        registry = Registry(4)
        follower = StoreFollower(store, registry, KafkaConfig(create_topics=False))
        assert await follower.refresh()
        assert [h.node_id for h in registry.handlers()] == [good.node_id]
    finally:
        await store.close()


async def test_the_follower_outlives_a_database_outage_and_follows_changes_after_it(
    own_postgres: PostgresServer,
) -> None:
    url = own_postgres.create_database()
    store, operator = await Store.open(url), await Store.open(url)
    registry = Registry(4)
    follower = StoreFollower(store, registry, KafkaConfig(create_topics=False))
    stop = asyncio.Event()
    following = asyncio.create_task(follower.follow(stop, 0.05))
    try:
        handler = make(node="1")
        await store.sync([handler], "static")
        await wait_until_async(lambda: registry.topics() == {"detect"}, timeout_s=10)
        await asyncio.to_thread(own_postgres.pause)
        await wait_until_async(lambda: follower.error is not None, timeout_s=20)
        assert registry.topics() == {"detect"}  # routing with the last known handlers
        await asyncio.to_thread(own_postgres.resume)
        await wait_until_async(lambda: follower.error is None, timeout_s=60)
        await HandlerService(operator).disable(handler.node_id)
        await wait_until_async(lambda: registry.topics() == set(), timeout_s=20)
        assert not following.done()
    finally:
        stop.set()
        await following
        await operator.close()
        await store.close()


async def test_every_field_at_its_bound_fits_the_columns(database_url: str) -> None:
    longest = make(
        "n" * 200,
        service_id="s" * 100,
        group_id="g" * 255,
        event="e" * 242,
        endpoint="a" * 63 + "." + "b" * 63 + "." + "c" * 63,
        hostname="h" * 63,
        path="/" + "p" * 1023,
        method="DELETE",
        version="v" * 255,
        node="9" * 64,
        model_type="canary",
        return_to="r" * 249,
        failed_topic="f" * 249,
        environment="x" * 255,
        tags=["t" * 255] * 64,
        consul_service_id="c" * 255,
        timeout=3600,
        retries=100,
    )
    assert len(longest.node_id) == 100 + 63 + len("canary") + 64 + 3
    store = await Store.open(database_url)
    try:
        assert await store.sync([longest], "consul") == 1
        assert (await store.get(longest.node_id)).handler == longest
    finally:
        await store.close()

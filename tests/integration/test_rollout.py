"""Rollout end to end: canary share, decoy shadows, promotion and live changes while events flow."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from logistik.control.handler_service import HandlerService
from logistik.control.store import HandlerRecord
from logistik.errors import ActionError
from tests.support.harness import RouterThread, handler, make_config, on_store
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer, Reply, wait_until

StartModel = Callable[..., ModelServer]
StartRouter = Callable[[dict[str, Any]], RouterThread]
T = TypeVar("T")


def node_ids(records: list[Any]) -> Counter[str]:
    """How many answers each node published."""
    return Counter(r.headers["logistik.node_id"] for r in records)


@pytest.fixture
def topic(servers: str) -> str:
    """A fresh topic with its results and failed topics."""
    name = unique("rollout")
    create_topics(servers, name, f"{name}-results", f"{name}-failed", partitions=2)
    return name


def test_canary_takes_its_share_and_replay_makes_the_same_choice(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    prod, canary = model_server(), model_server()
    handlers = [
        handler("face", topic, prod.port, version="1"),
        handler(
            "face", topic, canary.port, version="2", node="1", model_type="canary", traffic=0.2
        ),
    ]
    router(make_config(servers, handlers))
    sent = [event() for _ in range(2000)]
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, sent)
        first = reader.wait_for(f"{topic}-results", 2000, timeout_s=90)
        counts = node_ids(first)
        share = counts["face-127.0.0.1-canary-1"] / 2000
        assert 0.17 <= share <= 0.23, counts  # 0.2 +- 5 standard deviations of 2000 draws
        chosen = {r.headers["logistik.event_id"]: r.headers["logistik.node_id"] for r in first}
        produce(servers, topic, sent[:300])  # the same events again, as a replay sends them
        again = reader.wait_for(f"{topic}-results", 2300, timeout_s=60)[2000:]
    assert len(again) == 300
    assert all(
        chosen[r.headers["logistik.event_id"]] == r.headers["logistik.node_id"] for r in again
    )


def test_decoy_gets_every_event_is_never_published_and_agreement_is_kept(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    def disagree_on_a_quarter(ev: dict[str, Any], _count: int) -> Reply:
        digit = hashlib.sha256(ev["id"].encode()).digest()[0] % 4
        return Reply(200, {"id": ev["id"], "label": "cat" if digit else "dog"})

    prod = model_server(lambda ev, _n: Reply(200, {"id": ev["id"], "label": "cat"}))
    shadow = model_server(disagree_on_a_quarter)
    handlers = [
        handler("face", topic, prod.port),
        handler("face", topic, shadow.port, node="9", model_type="decoy", return_to=None),
    ]
    config = make_config(servers, handlers, discovery={"refresh_s": 0.2})
    running = router(config)
    sent = [event() for _ in range(200)]
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, sent)
        records = reader.wait_for(f"{topic}-results", 200)
        wait_until(lambda: shadow.count == 200, what="the decoy to see every event")
    assert set(node_ids(records)) == {"face-127.0.0.1-model-0"}
    expected = sum(1 for e in sent if hashlib.sha256(e["id"].encode()).digest()[0] % 4)
    url = config["database"]["url"]
    decoy_id = "face-127.0.0.1-decoy-9"

    def counted() -> bool:
        record = on_store(url, lambda service: service.show(decoy_id))
        return record.decoy_compared == 200

    wait_until(counted, what="the agreement counts in the store")
    record = on_store(url, lambda service: service.show(decoy_id))
    assert record.decoy_agreed == expected
    assert running.runner is not None


def test_promote_and_live_changes_take_effect_without_restart(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    old, new = model_server(), model_server()
    handlers = [
        handler("face", topic, old.port, version="1"),
        handler("face", topic, new.port, version="2", node="1", model_type="canary", traffic=0.0),
    ]
    config = make_config(servers, handlers, discovery={"refresh_s": 0.2})
    router(config)
    url = config["database"]["url"]
    with TopicReader(servers, f"{topic}-results") as reader:
        batch = [event() for _ in range(20)]
        produce(servers, topic, batch)
        assert set(node_ids(reader.wait_for(f"{topic}-results", 20))) == {"face-127.0.0.1-model-0"}
        changed: list[HandlerRecord] = on_store(url, lambda s: s.promote("face-127.0.0.1-canary-1"))
        assert {(r.node_id, r.handler.model_type.value, r.handler.traffic) for r in changed} == {
            ("face-127.0.0.1-canary-1", "model", 0.0),
            ("face-127.0.0.1-model-0", "canary", 0.0),
        }

        def routed_to_new() -> bool:
            produce(servers, topic, [event()])
            latest = reader.on(f"{topic}-results")[-1:]
            return bool(latest) and latest[0].headers["logistik.node_id"].endswith("canary-1")

        wait_until(routed_to_new, timeout_s=20, what="events to reach the promoted version")
        later = [event() for _ in range(20)]
        later_ids = {e["id"] for e in later}
        produce(servers, topic, later)
        wait_until(
            lambda: (
                len(
                    [
                        r
                        for r in reader.on(f"{topic}-results")
                        if r.headers["logistik.event_id"] in later_ids
                    ]
                )
                == 20
            ),
            what="answers to the events sent after the promotion",
        )
        answered_later = [
            r for r in reader.on(f"{topic}-results") if r.headers["logistik.event_id"] in later_ids
        ]
        assert set(node_ids(answered_later)) == {"face-127.0.0.1-canary-1"}
        with pytest.raises(ActionError, match="last active production instance"):
            on_store(url, lambda s: s.demote("face-127.0.0.1-canary-1"))
        on_store(url, lambda s: s.disable("face-127.0.0.1-canary-1"))
        on_store(url, lambda s: s.set_traffic("face-127.0.0.1-model-0", 1.0))
        seen = len(reader.on(f"{topic}-results"))

        def standby_answers() -> bool:
            produce(servers, topic, [event()])
            fresh = reader.on(f"{topic}-results")[seen:]
            return any(r.headers["logistik.node_id"].endswith("model-0") for r in fresh)

        wait_until(standby_answers, timeout_s=20, what="the standby to answer again")
    assert old.count > 20 and new.count >= 20


def test_group_with_every_instance_down_sends_events_to_failed_topic(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    model = model_server()
    config = make_config(
        servers, [handler("face", topic, model.port)], discovery={"refresh_s": 0.2}
    )
    router(config)
    url = config["database"]["url"]

    async def mark_down(service: HandlerService) -> None:
        record = await service.show("face-127.0.0.1-model-0")
        down = record.handler.model_copy(update={"enabled": False})
        await service.store.sync([down], "static", problems={down.node_id: "critical"})

    on_store(url, mark_down)
    with TopicReader(servers, f"{topic}-failed", f"{topic}-results") as reader:

        def failed_once() -> bool:
            produce(servers, topic, [event()])
            return bool(reader.on(f"{topic}-failed"))

        wait_until(failed_once, timeout_s=20, what="a failed record for the down group")
        record = reader.on(f"{topic}-failed")[0]
    assert record.headers["logistik.reason"] == "no-handler"
    assert record.headers["logistik.error"] == (
        "no instance of group face is up (down: face-127.0.0.1-model-0)"
    )
    assert record.headers["logistik.failed_nodes"] == "face-127.0.0.1-model-0"


def test_a_new_topic_joins_without_double_routing_events_in_flight(
    servers: str, topic: str, model_server: StartModel, router: StartRouter
) -> None:
    slow = model_server(lambda ev, _n: Reply(200, {"id": ev["id"]}, delay_s=0.3))
    other_topic = unique("joining")
    create_topics(servers, other_topic, f"{other_topic}-results", f"{other_topic}-failed")
    other = model_server()
    config = make_config(servers, [handler("face", topic, slow.port)], discovery={"refresh_s": 0.2})
    router(config)
    sent = [event() for _ in range(120)]
    with TopicReader(servers, f"{topic}-results", f"{other_topic}-results") as reader:
        produce(servers, topic, sent)
        wait_until(lambda: slow.active > 0, what="calls in flight on the first topic")
        fields = handler("voice", other_topic, other.port)
        on_store(config["database"]["url"], lambda s: s.add(fields))
        produce(servers, other_topic, [event()])
        reader.wait_for(f"{other_topic}-results", 1, timeout_s=40)
        records = reader.wait_for(f"{topic}-results", len(sent), timeout_s=60)
    answered = Counter(r.headers["logistik.event_id"] for r in records)
    assert set(answered) == {e["id"] for e in sent}
    assert max(answered.values()) == 1, "an event in flight was routed twice"
    assert slow.count == len(sent)

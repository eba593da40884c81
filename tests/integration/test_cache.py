"""The Redis response cache on a real redis-server: hits skip the model, an outage loses nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.support.databases import RedisServer
from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import TopicReader, create_topics, end_offsets, event, produce, unique
from tests.support.models import ModelServer, wait_until

pytestmark = pytest.mark.one_broker  # the subject is the Redis cache, not the broker


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for one test."""
    server = RedisServer().start()
    yield server
    server.stop()


def lookup(**extra: Any) -> dict[str, Any]:
    """The same request (verb, provider, actor, object) under a fresh event id."""
    return event(
        verb="detect",
        actor="alice",
        provider={"id": "site-1"},
        object={"url": "https://img.example/1.jpg"},
        **extra,
    )


def test_a_hit_publishes_the_stored_answer_without_calling_the_model(
    servers: str,
    redis_server: RedisServer,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    topic = unique("cache")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    model = model_server()
    router(
        make_config(
            servers,
            [handler("face", topic, model.port, version="3")],
            cache={"url": redis_server.url, "ttl_s": 60},
        )
    )
    first = lookup()
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, [first])
        [answer] = reader.wait_for(f"{topic}-results", 1)
        # The answer is stored after it is published: the repeats go once it is there.
        with redis.Redis.from_url(redis_server.url) as store:
            wait_until(lambda: store.dbsize() > 0, what="the first answer stored in Redis")
        produce(servers, topic, [lookup(), lookup(), event(actor="bob")])
        records = reader.wait_for(f"{topic}-results", 4)
    assert model.count == 2  # the first lookup and bob's; both repeats came from the cache
    hits = [r for r in records if r.headers.get("logistik.cache") == "hit"]
    assert len(hits) == 2
    assert all(r.value == answer.value for r in hits)
    assert all(r.key == b"alice" for r in hits)


def test_redis_stopped_mid_run_loses_nothing(
    servers: str,
    redis_server: RedisServer,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    topic = unique("cache")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    model = model_server()
    router(
        make_config(servers, [handler("face", topic, model.port)], cache={"url": redis_server.url})
    )
    with TopicReader(servers, f"{topic}-results") as reader:
        # Each its own request (a cache key of its own): every one of the 40 calls the model.
        produce(servers, topic, [event(actor=f"actor-{i}") for i in range(10)])
        reader.wait_for(f"{topic}-results", 10)
        redis_server.stop()
        later = [event(actor=f"actor-{i}") for i in range(10, 40)]
        produce(servers, topic, later)
        records = reader.wait_for(f"{topic}-results", 40)
    assert {r.headers["logistik.event_id"] for r in records[10:]} == {e["id"] for e in later}
    assert end_offsets(servers, f"{topic}-failed") == [0]
    assert model.count == 40

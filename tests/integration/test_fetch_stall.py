"""Records the broker holds but no fetch brings (an open transaction) are reported, then routed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition

from logistik.config import KafkaConfig
from logistik.kafka import EventConsumer, OffsetBook
from tests.support.api_client import Client, sample, sample_or_none
from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import (
    TopicReader,
    create_topics,
    event,
    open_transaction,
    produce,
    unique,
)
from tests.support.models import ModelServer, wait_until


# Tansu is left out: what is tested is logistik's watch, and Apache Kafka's transactions are
# the reference for read_committed consumers waiting behind an open one.
@pytest.mark.brokers("kafka")
def test_records_behind_an_open_transaction_are_reported_and_routed_once_it_ends(
    servers: str,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = unique("held")
    results = f"{topic}-results"
    create_topics(servers, topic, results, f"{topic}-failed", partitions=2)
    model = model_server()
    running = router(
        make_config(servers, [handler("m", topic, model.port)], kafka={"fetch_stalled_after_s": 2})
    )
    api = Client.of(running)
    wait_until(lambda: api.get("/readyz").status == 200, what="ready")
    # A producer that begins a transaction and hangs: read_committed consumers (logistik's,
    # like librdkafka's default) see nothing of partition 0 past it, and its lag shows 0.
    in_transaction = event()
    hung = open_transaction(servers, topic, 0, orjson.dumps(in_transaction))
    held = [event() for _ in range(20)]
    flowing = [event() for _ in range(20)]
    produce(servers, topic, held, partition=0)
    produce(servers, topic, flowing, partition=1)
    with TopicReader(servers, results) as reader:
        reader.wait_for(results, len(flowing))
        wait_until(lambda: api.get("/readyz").status == 503, timeout_s=30, what="not ready")
        body = api.get("/readyz").json()
        detail = body["checks"]["fetching"]["detail"]
        assert detail.startswith(f"{topic}[0]: 21 record(s) from offset 0 not fetched for ")
        assert "a transaction left open since offset 0 holds them" in detail
        assert body["checks"]["consuming"]["ok"], "partition 1 is still consumed"
        assert api.get("/healthz").status == 200
        reply = api.get("/api/status")
        assert reply.status == 200
        status = reply.json()
        assert [(s["topic"], s["partition"], s["waiting"]) for s in status["not_fetched"]] == [
            (topic, 0, 21)
        ]
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("not fetching")
        ]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith(f"not fetching {topic}[0]: 21 record(s) from offset 0 ")
        assert "a transaction left open since offset 0 holds them" in warnings[0]
        metrics = api.get("/metrics").text
        stalled = {"topic": topic, "partition": "0"}
        assert sample(metrics, "logistik_consumer_not_fetched_records", **stalled) == 21
        assert sample(metrics, "logistik_consumer_not_fetched_seconds", **stalled) >= 2
        fetched = {"topic": topic, "partition": "1"}
        # A partition that is fetched has its sample, at 0: alerts need not wait for a series.
        assert sample_or_none(metrics, "logistik_consumer_not_fetched_seconds", **fetched) == 0
        assert sample(metrics, "logistik_consumer_not_fetched_records", **fetched) == 0
        answered = {r.json()["id"] for r in reader.on(results)}
        assert answered == {e["id"] for e in flowing}, "nothing behind the transaction is routed"

        hung.commit_transaction(30)
        everything = [in_transaction, *held, *flowing]
        reader.wait_for(results, len(everything))
        wait_until(lambda: api.get("/readyz").status == 200, timeout_s=30, what="ready again")
    assert {r.json()["id"] for r in reader.on(results)} == {e["id"] for e in everything}
    assert any(r.getMessage() == f"{topic}[0]: records are fetched again" for r in caplog.records)
    assert api.get("/api/status").json()["not_fetched"] == []
    metrics = api.get("/metrics").text
    assert sample(metrics, "logistik_consumer_not_fetched_records", topic=topic, partition="0") == 0


@pytest.mark.one_broker  # the subject is logistik's probe; either broker answers it alike
async def test_a_probe_finds_records_that_librdkafka_statistics_do_not_show(servers: str) -> None:
    topic = unique("probe")
    create_topics(servers, topic)
    produce(servers, topic, [event() for _ in range(5)])
    consumer = EventConsumer(KafkaConfig(bootstrap_servers=servers), OffsetBook())
    try:
        consumer._assignment = [TopicPartition(topic, 0)]
        # What the statistics last said of a broker that stopped answering fetches: caught up
        # at offset 2, and nothing has moved for 100 s. The broker really holds 5 records.
        consumer._watch_positions({(topic, 0): (2, 2, 2)}, time.monotonic() - 100)
        assert consumer.fetch_stalls(0, time.monotonic()) == []
        await consumer.probe_watermarks(60)
        assert consumer.fetch_stalls(60, time.monotonic()) == []  # counted from this probe
        [stall] = consumer.fetch_stalls(60, time.monotonic() + 61)
        assert (stall.position, stall.high) == (2, 5)
        assert stall.describe(stall.since_s + 61).endswith(": the broker does not serve them")
        # Once the position moves, the probe has nothing to say of it.
        consumer._watch_positions({(topic, 0): (5, 5, 5)}, time.monotonic())
        await consumer.probe_watermarks(60)
        assert consumer.fetch_stalls(0, time.monotonic() + 3600) == []
    finally:
        consumer.shutdown()

"""The router's producer on a real broker: fatal errors replaced, too-large records told apart."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from logistik.config import KafkaConfig
from logistik.errors import BackgroundTaskError, BrokerError, PublishError
from logistik.kafka import EventProducer
from logistik.kafka.producer import MAX_RECOVERIES
from tests.support.fatal_errors import inject_fatal_error
from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import TopicReader, create_topics, unique
from tests.support.models import ModelServer, wait_until, wait_until_async


async def started(servers: str) -> EventProducer:
    producer = EventProducer(KafkaConfig(bootstrap_servers=servers))
    producer.start()
    return producer


async def test_a_fatal_error_replaces_the_producer_and_every_record_arrives(
    servers: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("fatal")
    create_topics(servers, topic, partitions=3)
    producer = await started(servers)
    values = [f"r{i}".encode() for i in range(3000)]
    with TopicReader(servers, topic) as reader, caplog.at_level(logging.INFO):
        sends = [asyncio.create_task(producer.send(topic, v, v)) for v in values[:1500]]
        await asyncio.sleep(0)  # handed to librdkafka, mostly not yet acknowledged
        inject_fatal_error(producer.client)
        sends += [asyncio.create_task(producer.send(topic, v, v)) for v in values[1500:]]
        await asyncio.wait_for(asyncio.gather(*sends), 60)
        assert producer.state()[0] == "ok"
        # Records sent again may be there twice (at least once): wait for each one, not a count.
        wait_until(lambda: {r.value for r in reader.on(topic)} >= set(values), 30, "every record")
    written = Counter(r.value for r in reader.on(topic))
    assert set(written) == set(values)
    assert producer.recovered == 1
    lines = [r.getMessage() for r in caplog.records if "Kafka producer failed" in r.getMessage()]
    assert len(lines) == 1 and "test_fatal_error: injected" in lines[0]
    assert await producer.flush(5) == 0
    producer.close()


async def test_fatal_errors_again_and_again_give_the_producer_up(servers: str) -> None:
    topic = unique("fatal")
    create_topics(servers, topic)
    producer = await started(servers)
    watch = asyncio.create_task(producer.watch())
    for _ in range(MAX_RECOVERIES + 1):
        client = producer.client
        inject_fatal_error(client)
        await wait_until_async(lambda c=client: producer.client is not c or watch.done())  # type: ignore[misc]
    with pytest.raises(BrokerError, match="the Kafka producer cannot recover: 6 fatal errors"):
        await asyncio.wait_for(watch, 5)
    assert producer.state()[0] == "failed"
    with pytest.raises(PublishError):
        await producer.send(topic, b"x")
    producer.close()


@pytest.mark.brokers("kafka")  # Tansu takes records of any size
async def test_only_the_too_large_record_of_a_batch_is_refused(servers: str) -> None:
    topic = unique("small")
    admin = AdminClient({"bootstrap.servers": servers})
    future = admin.create_topics([NewTopic(topic, 1, config={"max.message.bytes": "2000"})])
    future[topic].result(10)
    producer = await started(servers)
    # Random bytes: the producer compresses its batches, and the broker's limit is on those.
    values = [b"y" * 50] * 20 + [os.urandom(5000)] + [b"z" * 50] * 20
    results = await asyncio.gather(
        *(producer.send(topic, v) for v in values), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, PublishError)]
    assert len(refused) == 1 and refused[0].too_large and refused[0].permanent
    assert results[20] is refused[0]
    producer.close()


def test_logistik_stops_when_its_producer_cannot_recover(
    servers: str, model_server: Callable[..., ModelServer]
) -> None:
    topic = unique("fatal")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed", f"{topic}-retry")
    config = make_config(servers, [handler("m", topic, model_server().port)])
    running = RouterThread(config).start()
    assert running.runner is not None and running.runner.producer is not None
    producer = running.runner.producer
    for _ in range(MAX_RECOVERIES + 1):
        client = producer.client
        inject_fatal_error(client)
        wait_until(lambda c=client: producer.client is not c or producer.state()[0] == "failed")  # type: ignore[misc]
    with pytest.raises(
        BackgroundTaskError, match="kafka producer failed: the Kafka producer cannot"
    ):
        running.stop()

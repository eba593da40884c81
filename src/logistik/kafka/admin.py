"""Asking the broker about topics, and creating the ones logistik writes to."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from logistik.config import KafkaConfig
from logistik.errors import BrokerError
from logistik.kafka.settings import base_config

METADATA_TIMEOUT_S = 5.0


def ensure_topics(kafka: KafkaConfig, topics: set[str], timeout_s: float = 10.0) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = AdminClient(base_config(kafka.bootstrap_servers))
    existing = list_topics(admin, kafka.bootstrap_servers, timeout_s)
    missing = sorted(topics - existing)
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=kafka.partitions, replication_factor=1) for t in missing],
        operation_timeout=timeout_s,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic '{topic}': {error.str()}") from None
    return created


def cluster_metadata(client: AdminClient | Consumer, bootstrap: str, timeout_s: float) -> Any:
    """The broker's metadata; a broker that does not answer is a one-line BrokerError."""
    try:
        return client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot reach the Kafka broker at {bootstrap}: {exc.args[0].str()}"
        ) from None


def list_topics(admin: AdminClient, bootstrap: str, timeout_s: float) -> set[str]:
    """The broker's topics; a broker that does not answer is a one-line BrokerError."""
    return set(cluster_metadata(admin, bootstrap, timeout_s).topics)


def topic_partitions(
    client: AdminClient | Consumer, servers: str, topic: str, timeout_s: float = METADATA_TIMEOUT_S
) -> list[int]:
    """The partitions of a topic; an absent broker or topic is a one-line BrokerError."""
    metadata = cluster_metadata(client, servers, timeout_s)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise BrokerError(f"topic '{topic}' does not exist on {servers}")
    return sorted(found.partitions)

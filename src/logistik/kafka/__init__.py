"""Kafka clients (consumer, producer, admin), their settings, and the embedded broker."""

from logistik.kafka.admin import cluster_metadata, ensure_topics, list_topics, topic_partitions
from logistik.kafka.consumer import EventConsumer, FetchStall, header_pairs, record_time
from logistik.kafka.embedded import EmbeddedBroker, free_port, loopback_servers
from logistik.kafka.offsets import OffsetBook, PartitionTracker, TopicPartitionKey
from logistik.kafka.producer import EventProducer, Headers, produce, try_produce, write_error
from logistik.kafka.settings import (
    LibrdkafkaLog,
    QuietLog,
    base_config,
    command_consumer_config,
    consumer_config,
    embedded_session,
    producer_config,
    retry_group,
)

__all__ = [
    "EmbeddedBroker",
    "EventConsumer",
    "EventProducer",
    "FetchStall",
    "Headers",
    "LibrdkafkaLog",
    "OffsetBook",
    "PartitionTracker",
    "QuietLog",
    "TopicPartitionKey",
    "base_config",
    "cluster_metadata",
    "command_consumer_config",
    "consumer_config",
    "embedded_session",
    "ensure_topics",
    "free_port",
    "header_pairs",
    "list_topics",
    "loopback_servers",
    "produce",
    "producer_config",
    "record_time",
    "retry_group",
    "topic_partitions",
    "try_produce",
    "write_error",
]

"""The router's librdkafka settings that depend on the config."""

from __future__ import annotations

from logistik.config import KafkaConfig
from logistik.kafka import consumer_config, embedded_session, producer_config


def test_the_embedded_broker_gets_a_short_session_unless_the_config_sets_one() -> None:
    short = consumer_config(embedded_session(KafkaConfig(bootstrap_servers="embedded")))
    assert short["session.timeout.ms"] == 3000
    assert short["heartbeat.interval.ms"] == 1000

    chosen = KafkaConfig(bootstrap_servers="embedded", session_timeout_ms=8000)
    assert consumer_config(embedded_session(chosen))["session.timeout.ms"] == 8000
    assert "heartbeat.interval.ms" not in consumer_config(embedded_session(chosen))

    own_heartbeat = KafkaConfig(
        bootstrap_servers="embedded", consumer={"heartbeat.interval.ms": 700}
    )
    assert consumer_config(embedded_session(own_heartbeat))["heartbeat.interval.ms"] == 700


def test_answers_are_compressed_with_lz4_unless_the_config_says_otherwise() -> None:
    assert producer_config(KafkaConfig())["compression.type"] == "lz4"
    chosen = KafkaConfig(producer={"compression.type": "zstd"})
    assert producer_config(chosen)["compression.type"] == "zstd"

"""Kafka clients (consumer, producer, admin), their settings, and the embedded broker."""

"""logistik: routes events from Kafka to machine-learning models over HTTP, and answers back."""

from logistik.config import Config, load_config, parse_config
from logistik.errors import (
    BrokerError,
    ConfigError,
    EmbeddedBrokerError,
    InvalidEventError,
    LogistikError,
    PublishError,
)
from logistik.handler import Handler, ModelType

__all__ = [
    "BrokerError",
    "Config",
    "ConfigError",
    "EmbeddedBrokerError",
    "Handler",
    "InvalidEventError",
    "LogistikError",
    "ModelType",
    "PublishError",
    "load_config",
    "parse_config",
]

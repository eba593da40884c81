"""logistik: routes events from Kafka to machine-learning models over HTTP, and answers back."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from logistik.errors import (
    BrokerError,
    ConfigError,
    EmbeddedBrokerError,
    InvalidEventError,
    LogistikError,
    PublishError,
)

if TYPE_CHECKING:
    from logistik.config import Config, load_config, parse_config
    from logistik.handler import Handler, ModelType

# Imported on first use: the command line starts (and answers Ctrl-C) sooner without them.
_LAZY = {
    "Config": "logistik.config",
    "load_config": "logistik.config",
    "parse_config": "logistik.config",
    "Handler": "logistik.handler",
    "ModelType": "logistik.handler",
}

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


def __getattr__(name: str) -> Any:
    """A lazily imported public name."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'logistik' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

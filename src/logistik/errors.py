"""The exceptions logistik raises, as one hierarchy.

LogistikError
 ├── ConfigError          a config file or value is wrong; the message names the key and file
 ├── InvalidEventError    a record is not an event logistik can route (not JSON, no verb, ...)
 ├── BrokerError          the Kafka broker cannot be reached or refused a request
 │    └── PublishError    a record could not be written to a topic
 ├── StoreError           the handler store refused a change (a node id taken, fields not valid)
 │    └── HandlerNotFoundError   no handler has the given node id
 ├── StoreUnavailableError  the database cannot be reached, read or written (down, read-only)
 ├── ActionError          a rollout action that makes no sense for this handler
 ├── DiscoveryError       Consul or a model's /info could not be read
 │    └── ConsulError     Consul could not be reached or refused a request (logistik.consul)
 ├── EmbeddedBrokerError  the embedded Tansu broker could not be started
 ├── ModelCallError       an HTTP call to a model got no whole answer (the router retries it)
 └── BackgroundTaskError  a task the process depends on ended; the process stops
"""

from __future__ import annotations


class LogistikError(Exception):
    """Base of every error logistik raises on purpose."""


class ConfigError(LogistikError):
    """A config file or value is wrong."""


class InvalidEventError(LogistikError):
    """A record that cannot be routed; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BrokerError(LogistikError):
    """The Kafka broker cannot be reached or refused a request."""


class PublishError(BrokerError):
    """A record could not be written to a topic.

    `permanent` when writing the same record again cannot help (the broker refuses it, not a
    broker that is away); `too_large` when the refusal is about its size.
    """

    def __init__(self, message: str, permanent: bool = False, too_large: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent or too_large
        self.too_large = too_large


class EmbeddedBrokerError(LogistikError):
    """The embedded Tansu broker could not be started."""


class StoreError(LogistikError):
    """The handler store refused a change: a node id taken, fields that are not valid."""


class HandlerNotFoundError(StoreError):
    """No handler has the given node id."""


class StoreUnavailableError(LogistikError):
    """The store's database cannot be reached, read or written (down, read-only): try later."""


class ActionError(LogistikError):
    """A rollout action that makes no sense for this handler."""


class DiscoveryError(LogistikError):
    """Consul or a model's /info could not be read."""


class ModelCallError(LogistikError):
    """An HTTP call to a model got no whole answer; the message says why in one line."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class BackgroundTaskError(LogistikError):
    """A task the process depends on (consume loop, store follower, discovery, web) ended."""


def one_line(text: str, limit: int | None = None) -> str:
    """Text as one line: its non-blank lines stripped and joined by `; `, cut at `limit` chars."""
    line = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if limit is None else line[:limit]


def describe(exc: BaseException, limit: int = 300) -> str:
    """An exception in one line: its message, or its type when it has none."""
    return one_line(str(exc) or type(exc).__name__, limit)

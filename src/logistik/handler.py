"""A handler: one running model instance that logistik calls."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from logistik.protocol import failed_topic

# Bounds of every field: what the store's columns hold, and what Kafka and HTTP accept.
TEXT_MAX = 255  # names, versions, ids: the store's varchar(255)
NODE_MAX = 64
PATH_MAX = 1024
TOPIC_MAX = 249  # Kafka's own limit on a topic name
TAGS_MAX = 64
TIMEOUT_MAX_S = 3600.0
RETRIES_MAX = 100
BATCH_SIZE_MAX = 1024  # events in one request to a batching model
BATCH_WAIT_MAX_MS = 10_000.0
BATCH_WAIT_DEFAULT_MS = 5.0
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_TOPIC = re.compile(r"[A-Za-z0-9._-]+")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PATH = re.compile(r"/[!-~]*")  # printable ASCII, no space
TOPIC_RULE = f"not a Kafka topic name (letters, digits, '.', '_' and '-'; {TOPIC_MAX} at most)"
PATH_RULE = "must start with '/' and hold no space, '#', backslash or control character"
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]*")


class ModelType(StrEnum):
    """The role of a handler inside its group."""

    MODEL = "model"  # production: answers the group's events
    CANARY = "canary"  # answers its traffic share of the group's events instead of production
    DECOY = "decoy"  # shadow: gets every event too; answers compared, never published
    DEPLOY = "deploy"  # registered and checked, gets no events until promoted


def node_id_of(fields: dict[str, Any]) -> str:
    """The identity `service_id-hostname-model_type-node` of a handler's fields."""
    model_type = fields.get("model_type") or ModelType.MODEL.value
    model_type = getattr(model_type, "value", model_type)
    return (
        f"{fields.get('service_id') or ''}-{fields.get('hostname') or ''}-{model_type}-"
        f"{fields.get('node') or '0'}"
    )


def is_host(text: str) -> bool:
    """Whether text is an IP address or a host name (dot-separated labels), and nothing more."""
    if not text or len(text) > 253:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        labels = text.removesuffix(".").split(".")
        return all(_LABEL.fullmatch(label) for label in labels) and not all(
            label.isdigit() for label in labels
        )
    return True


def is_topic(text: str) -> bool:
    """Whether text is a name Kafka accepts for a topic."""
    return len(text) <= TOPIC_MAX and text not in (".", "..") and bool(_TOPIC.fullmatch(text))


def _text(value: str, limit: int = TEXT_MAX) -> str:
    if len(value) > limit:
        raise ValueError(f"longer than {limit} characters ({len(value)})")
    if not _PRINTABLE.fullmatch(value):
        raise ValueError("holds control characters")
    return value


def _identity(value: str, limit: int = TEXT_MAX) -> str:
    _text(value, limit)
    if "/" in value or any(c.isspace() for c in value):
        raise ValueError("may not hold '/' or white space (it is part of the node id)")
    return value


class Handler(BaseModel):
    """Every field of one handler; missing identity fields are derived from the given ones."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, coerce_numbers_to_str=True
    )

    name: str = Field(min_length=1)
    event: str = Field(description="topic whose events this handler receives")
    endpoint: str = Field(min_length=1, description="address the model listens on")
    port: int = Field(ge=1, le=65535)
    service_id: str = ""
    group_id: str = ""
    hostname: str = ""
    path: str = "/"
    method: str = "POST"
    version: str = ""
    node: str = "0"
    model_type: ModelType = ModelType.MODEL
    enabled: bool = True
    retired: bool = False
    traffic: float = Field(default=0.0, ge=0.0, le=1.0)
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=TIMEOUT_MAX_S,
        validation_alias=AliasChoices("timeout_s", "timeout"),
    )
    retries: int | None = Field(default=None, ge=0, le=RETRIES_MAX)
    # Micro-batching, for models that take a JSON list of events and answer a list as long.
    batch_max_size: int | None = Field(default=None, ge=1, le=BATCH_SIZE_MAX)
    batch_max_wait_ms: float | None = Field(default=None, ge=0, le=BATCH_WAIT_MAX_MS)
    return_to: str | None = None
    failed_topic: str | None = None
    environment: str = ""
    tags: list[str] = Field(default_factory=list, max_length=TAGS_MAX)
    consul_service_id: str = ""
    startup: datetime | None = None
    node_id: str = Field(default="", description="identity: service_id-hostname-model_type-node")

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        """Fill service_id, group_id and hostname from the fields they default to."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("endpoint"), str) and data["endpoint"].startswith("["):
            data["endpoint"] = data["endpoint"].removeprefix("[").removesuffix("]")
        if not data.get("service_id") and data.get("name"):
            data["service_id"] = data["name"]
        if not data.get("group_id") and data.get("service_id"):
            data["group_id"] = data["service_id"]
        if not data.get("hostname") and data.get("endpoint"):
            data["hostname"] = data["endpoint"]
        if isinstance(data.get("node"), int):
            data["node"] = str(data["node"])
        for topic in ("return_to", "failed_topic"):
            if data.get(topic) == "":
                data[topic] = None
        if not data.get("node_id"):
            data["node_id"] = node_id_of(data)
        return data

    @field_validator("name", "group_id", "version", "environment", "consul_service_id")
    @classmethod
    def _bounded(cls, value: str) -> str:
        """Text that fits the store and prints on one line."""
        return _text(value)

    @field_validator("service_id", "node_id")
    @classmethod
    def _identity(cls, value: str) -> str:
        """Parts of the node id: they appear in URLs and Kafka headers."""
        return _identity(value)

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        """The instance number or name within its host."""
        return _identity(value, NODE_MAX)

    @field_validator("endpoint", "hostname")
    @classmethod
    def _host(cls, value: str) -> str:
        """A host name or an IP address: nothing else may go into the model's URL."""
        if not is_host(value):
            raise ValueError("not a host name or IP address")
        return value

    @field_validator("event", "return_to", "failed_topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        """A Kafka topic name (the event may stay empty while its topic is not known yet)."""
        if value and not is_topic(value):
            raise ValueError(TOPIC_RULE)
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        """The path part of the model's URL."""
        if len(value) > PATH_MAX:
            raise ValueError(f"longer than {PATH_MAX} characters ({len(value)})")
        if not _PATH.fullmatch(value) or "#" in value or "\\" in value:
            raise ValueError(PATH_RULE)
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        """One of the HTTP methods a model can take a JSON body with (or GET)."""
        if isinstance(value, str) and value.upper() in METHODS:
            return value.upper()
        raise ValueError(f"must be one of {', '.join(METHODS)}")

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        """Tag names, each bounded."""
        for tag in value:
            _text(tag)
        return value

    @model_validator(mode="after")
    def _check(self) -> Handler:
        """Refuse a failed topic Kafka would not take."""
        if self.event and len(self.failed_topic_name) > TOPIC_MAX:
            raise ValueError(
                f"the failed topic {self.failed_topic_name[:40]}… is longer than {TOPIC_MAX} "
                "characters: give a shorter event or a failed_topic"
            )
        return self

    def problem(self) -> str | None:
        """Why this handler cannot be routed to, or None when it can."""
        if not self.event:
            return "no event (the topic it handles): give an event= tag or answer it in /info"
        if self.model_type in (ModelType.MODEL, ModelType.CANARY) and not self.return_to:
            return (
                f"return_to is required for a {self.model_type.value} handler "
                "(the topic its answers are published to)"
            )
        if self.event in (self.return_to, self.failed_topic):
            which = "return_to" if self.return_to == self.event else "failed_topic"
            return (
                f"{which} is the topic it handles ({self.event}): each answer would come back "
                "as a new event, for ever"
            )
        return None

    @property
    def url(self) -> str:
        """The URL logistik sends events to."""
        host = f"[{self.endpoint}]" if ":" in self.endpoint else self.endpoint
        return f"http://{host}:{self.port}{self.path}"

    @property
    def batch_size(self) -> int:
        """Events per request: 1 unless the model takes batches."""
        return self.batch_max_size or 1

    @property
    def batch_wait_s(self) -> float:
        """How long the first event of a batch waits for others before the request goes."""
        wait_ms = self.batch_max_wait_ms
        return (BATCH_WAIT_DEFAULT_MS if wait_ms is None else wait_ms) / 1000

    @property
    def failed_topic_name(self) -> str:
        """Where events this handler could not handle go."""
        return self.failed_topic or failed_topic(self.event)

    @property
    def active(self) -> bool:
        """Whether the handler should receive events now."""
        return self.enabled and not self.retired and self.problem() is None

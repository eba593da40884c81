"""A handler: one running model instance that logistik calls."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from logistik.protocol import failed_topic


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
        default=None, gt=0, validation_alias=AliasChoices("timeout_s", "timeout")
    )
    retries: int | None = Field(default=None, ge=0)
    return_to: str | None = None
    failed_topic: str | None = None
    environment: str = ""
    tags: list[str] = Field(default_factory=list)
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
        if not data.get("service_id") and data.get("name"):
            data["service_id"] = data["name"]
        if not data.get("group_id") and data.get("service_id"):
            data["group_id"] = data["service_id"]
        if not data.get("hostname") and data.get("endpoint"):
            data["hostname"] = data["endpoint"]
        if isinstance(data.get("node"), int):
            data["node"] = str(data["node"])
        if not data.get("node_id"):
            data["node_id"] = node_id_of(data)
        return data

    @model_validator(mode="after")
    def _check(self) -> Handler:
        """Refuse a path that cannot be part of a URL."""
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")
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
        return None

    @property
    def url(self) -> str:
        """The URL logistik sends events to."""
        return f"http://{self.endpoint}:{self.port}{self.path}"

    @property
    def failed_topic_name(self) -> str:
        """Where events this handler could not handle go."""
        return self.failed_topic or failed_topic(self.event)

    @property
    def active(self) -> bool:
        """Whether the handler should receive events now."""
        return self.enabled and not self.retired and self.problem() is None

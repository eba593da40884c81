"""The JSON bodies the API accepts: each refuses fields it does not know."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrafficChange(_Body):
    """A canary's new share of its group's events."""

    traffic: float = Field(ge=0.0, le=1.0)


class QueryRequest(_Body):
    """One event to send to one registered handler."""

    node_id: str = Field(min_length=1)
    event: dict[str, Any]


class LoginRequest(_Body):
    """A user name and password, or an API token."""

    user: str | None = Field(default=None, min_length=1, max_length=256)
    password: str | None = Field(default=None, max_length=1024)
    token: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _complete(self) -> LoginRequest:
        """Either a token, or both a user and a password."""
        if self.token is None and (self.user is None or self.password is None):
            raise ValueError("give user and password, or token")
        return self

"""A rollout as logistik keeps it: its options, its state, and the decisions taken on the way."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from logistik.control.rollout_rules import Limits

DEFAULT_STEPS = (5.0, 25.0, 50.0, 100.0)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class Status(StrEnum):
    """Where a rollout is: running, paused, or ended in one of four ways."""

    RUNNING = "running"
    PAUSED = "paused"
    PROMOTING = "promoting"  # decided; the promotion itself is being written
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled-back"
    ABORTED = "aborted"
    ENDED_BY_HAND = "ended-by-hand"


ACTIVE = (Status.RUNNING, Status.PAUSED, Status.PROMOTING)


def parse_duration_s(value: str | float | int) -> float:
    """Seconds from a number of seconds or text such as 90, 30s, 10m, 1.5h, 500ms."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a duration: write e.g. 90, 30s, 10m or 1h")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


class RolloutOptions(BaseModel):
    """How a rollout moves and what it tolerates; the defaults are safe for a first rollout."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    steps: list[float] = Field(default_factory=lambda: list(DEFAULT_STEPS))
    min_events: int = Field(default=500, ge=1)
    step_wait_s: float = Field(
        default=600.0, ge=0, validation_alias=AliasChoices("step_wait_s", "step_wait")
    )
    max_error_rate_increase: float = Field(default=0.01, ge=0.0, le=1.0)
    max_p99_increase: float = Field(default=1.2, ge=1.0)
    max_p50_increase: float = Field(default=1.2, ge=1.0)
    min_agreement: float = Field(default=0.95, ge=0.0, le=1.0)
    shadow_share: float = Field(default=0.0, ge=0.0, le=1.0)
    on_slow: Literal["rollback", "hold"] = "rollback"

    @field_validator("steps", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """Steps may be given as text: 5,25,50,100."""
        if isinstance(value, str):
            return [part.strip().rstrip("%") for part in value.split(",") if part.strip()]
        return value

    @field_validator("steps")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        """Percentages above 0, at most 100, each above the one before."""
        if not value:
            raise ValueError("give at least one step")
        if any(not 0 < step <= 100 for step in value):
            raise ValueError("each step is a percentage above 0 and at most 100")
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("each step must be larger than the one before")
        return value

    @field_validator("step_wait_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        """A step wait may be given as text: 10m."""
        return parse_duration_s(value) if isinstance(value, str) else value

    def limits(self) -> Limits:
        """The limits the decision rule reads."""
        return Limits(
            self.min_events,
            self.step_wait_s,
            self.max_error_rate_increase,
            self.max_p99_increase,
            self.min_agreement,
            self.on_slow,
            self.max_p50_increase,
        )


@dataclass(frozen=True)
class Rollout:
    """One rollout of a canary (or decoy) in its group."""

    id: int
    node_id: str
    topic: str
    group_id: str
    status: Status
    steps: list[float]  # percentages; a decoy's rollout starts with a 0 % shadow stage
    step: int
    options: RolloutOptions
    from_decoy: bool
    revision: int
    reason: str | None
    created_at: datetime
    updated_at: datetime
    step_started_at: datetime
    ended_at: datetime | None

    @property
    def share(self) -> float:
        """The canary's share (0-1) of its group's events at the current step."""
        return self.steps[self.step] / 100

    @property
    def last_step(self) -> bool:
        """Whether the current step is the last one (the next decision promotes)."""
        return self.step == len(self.steps) - 1

    @property
    def active(self) -> bool:
        """Whether the rollout still steers its canary."""
        return self.status in ACTIVE

    @property
    def shadow_stage(self) -> bool:
        """Whether the candidate is still a decoy (shadow) at this step."""
        return self.from_decoy and self.step == 0


@dataclass(frozen=True)
class Decision:
    """One recorded decision, with the figures it was taken from."""

    id: int
    step: int
    share: float
    at: datetime
    outcome: str
    rule: str
    reason: str
    figures: dict[str, Any]
    process: str

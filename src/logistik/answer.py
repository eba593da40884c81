"""What a model's answer means for its event, and one answer as logistik read it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Outcome(StrEnum):
    """What a model's answer means for the event."""

    OK = "ok"  # publish the body
    IGNORED = "ignored"  # 204: the model chose to ignore the event
    DUPLICATE = "duplicate"  # 422: the model already handled this event
    REJECTED = "rejected"  # 400, 404, other 4xx: permanent, no retry
    RETRY = "retry"  # 429, 5xx, timeout, refused, bad JSON: try again later


@dataclass(slots=True)
class Answer:
    """A classified model answer."""

    outcome: Outcome
    status: int | None
    body: bytes = b""
    error: str = ""
    retry_after_s: float | None = None
    latency_s: float = 0.0
    timed_out: bool = False
    held: bool = False  # no call was made: every instance's circuit is open, or it is busy
    # Whether it counts for the instance's health: the other events of a batch whose request
    # failed whole share its one failure (one request, one failure for the circuit).
    counts: bool = True

    def shared_by(self, count: int) -> list[Answer]:
        """This answer for each of `count` events of one request that failed whole."""
        return [self, *(replace(self, counts=False) for _ in range(count - 1))]

    @property
    def kind(self) -> str:
        """The answer's class in figures: ok, ignored, duplicate, refused, error or timeout."""
        if self.timed_out:
            return "timeout"
        return OUTCOME_KINDS[self.outcome]


OUTCOME_KINDS = {
    Outcome.OK: "ok",
    Outcome.IGNORED: "ignored",
    Outcome.DUPLICATE: "duplicate",
    Outcome.REJECTED: "refused",
    Outcome.RETRY: "error",
}

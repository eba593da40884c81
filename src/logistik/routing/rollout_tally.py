"""Per-window counts of a rollout's canary and production calls, kept until they are stored."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from logistik.answer import Answer, Outcome
from logistik.event import Event, event_id
from logistik.handler import Handler, ModelType
from logistik.routing.registry import Group, LiveHandler, canary_draw

CANARY, PRODUCTION = "canary", "production"
# Latency histogram: bucket i holds calls that took [FIRST_S * GROWTH**i, FIRST_S * GROWTH**(i+1)).
FIRST_S = 0.0001
GROWTH = 1.05


def bucket_of(latency_s: float) -> int:
    """The histogram bucket of a latency (5 % wide buckets from 0.1 ms up)."""
    if latency_s <= FIRST_S:
        return 0
    return int(math.log(latency_s / FIRST_S) / math.log(GROWTH))


def bucket_edges_s(bucket: int) -> tuple[float, float]:
    """The lowest and highest latency a bucket holds."""
    return FIRST_S * GROWTH**bucket, FIRST_S * GROWTH ** (bucket + 1)


@dataclass
class Counts:
    """Calls of one role (canary or production) in one window, and answers compared."""

    calls: int = 0
    errors: int = 0  # calls without a usable answer: retried or failed for good (timeouts too)
    timeouts: int = 0
    latency_sum_s: float = 0.0
    latency: dict[int, int] = field(default_factory=dict)  # histogram bucket -> calls
    compared: int = 0  # canary answers compared with production's answer to the same event
    agreed: int = 0

    def record(self, answer: Answer) -> None:
        """Count one call and its answer."""
        self.calls += 1
        if answer.outcome in (Outcome.RETRY, Outcome.REJECTED):
            self.errors += 1
        self.timeouts += int(answer.timed_out)
        self.latency_sum_s += answer.latency_s
        bucket = bucket_of(answer.latency_s)
        self.latency[bucket] = self.latency.get(bucket, 0) + 1

    def add(self, other: Counts) -> None:
        """Add another window's counts to these."""
        self.calls += other.calls
        self.errors += other.errors
        self.timeouts += other.timeouts
        self.latency_sum_s += other.latency_sum_s
        for bucket, calls in other.latency.items():
            self.latency[bucket] = self.latency.get(bucket, 0) + calls
        self.compared += other.compared
        self.agreed += other.agreed

    def empty(self) -> bool:
        """Whether nothing was counted."""
        return self.calls == 0 and self.compared == 0

    def as_json(self) -> dict[str, Any]:
        """The counts as stored (histogram keys as text)."""
        return {
            "calls": self.calls,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "latency_sum_s": self.latency_sum_s,
            "latency": {str(k): v for k, v in sorted(self.latency.items())},
            "compared": self.compared,
            "agreed": self.agreed,
        }


@dataclass(frozen=True)
class Watched:
    """A rollout as the router needs it: its canary, its current step, its shadow share."""

    rollout_id: int
    step: int
    topic: str
    group_id: str
    canary: str  # node id
    shadow_share: float = 0.0


class RolloutTally:
    """Counts the calls of groups under a rollout, per rollout step and role, until drained."""

    def __init__(self) -> None:
        self._watched: dict[tuple[str, str], Watched] = {}
        self._counts: dict[tuple[int, int, str], Counts] = {}

    def watch(self, rollouts: Iterable[Watched]) -> None:
        """The rollouts to count from now on (those running or paused)."""
        self._watched = {(w.topic, w.group_id): w for w in rollouts}

    def _window(self, handler: Handler) -> Counts | None:
        watched = self._watched.get((handler.event, handler.group_id))
        if watched is None:
            return None
        if handler.node_id == watched.canary:
            role = CANARY
        elif handler.model_type is ModelType.MODEL:
            role = PRODUCTION
        else:
            return None
        key = (watched.rollout_id, watched.step, role)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = Counts()
        return counts

    def call(self, handler: Handler, answer: Answer) -> None:
        """Count one call of any handler (only those of a watched group are kept)."""
        if not self._watched:
            return
        counts = self._window(handler)
        if counts is not None:
            counts.record(answer)

    def compared(self, handler: Handler, agreed: bool) -> None:
        """Count one comparison of the canary's answer with production's (by either side)."""
        if not self._watched:
            return
        watched = self._watched.get((handler.event, handler.group_id))
        if watched is None or (
            handler.node_id != watched.canary and handler.model_type is not ModelType.MODEL
        ):
            return  # another decoy of the group
        key = (watched.rollout_id, watched.step, CANARY)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = Counts()
        counts.compared += 1
        counts.agreed += int(agreed)

    def shadowing(self, group: Group) -> bool:
        """Whether some events of the group are also sent to production as a shadow."""
        watched = self._watched.get((group.topic, group.group_id)) if self._watched else None
        return watched is not None and watched.shadow_share > 0

    def shadows(self, group: Group, event: Event) -> list[LiveHandler]:
        """Production to ask as a shadow of the canary for this event: [] or one instance.

        The canary answers an event when its stable draw is under the canary share; the
        events under `shadow_share` of that share are also sent to production, whose answer
        is compared, never published.
        """
        watched = self._watched.get((group.topic, group.group_id)) if self._watched else None
        if watched is None or watched.shadow_share <= 0 or not group.production:
            return []
        share = sum(c.handler.traffic for c in group.canaries if c.handler.traffic > 0)
        if canary_draw(group.group_id, event_id(event)) >= share * watched.shadow_share:
            return []
        instance = group.pick(group.production)
        return [] if instance is None else [instance]

    def drain(self) -> dict[tuple[int, int, str], Counts]:
        """The counts since the last drain, per (rollout id, step, role)."""
        counts, self._counts = self._counts, {}
        return {key: c for key, c in counts.items() if not c.empty()}

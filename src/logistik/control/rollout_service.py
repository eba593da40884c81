"""The rollout actions, shared by the CLI and the REST API: start, pause, resume, abort, show."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from logistik.control.handler_service import HandlerService
from logistik.control.rollout_model import Decision, Rollout, RolloutOptions, Status
from logistik.control.rollout_rules import decide, quantile_s
from logistik.control.rollout_store import (
    NewDecision,
    RolloutStore,
    process_name,
    window_of,
)
from logistik.control.store import Store
from logistik.errors import ActionError
from logistik.handler import ModelType
from logistik.routing.rollout_tally import CANARY, Counts

T = TypeVar("T")
SERIES_POINTS = 60  # at most this many points in a rollout's chart


async def with_rollouts(url: str, action: Callable[[RolloutService], Awaitable[T]]) -> T:
    """Open the store at `url`, run one rollout action on it, close the store."""
    store = await Store.open(url)
    try:
        return await action(RolloutService(store))
    finally:
        await store.close()


class RolloutService:
    """Starts and steers rollouts; the decisions themselves are the controller's."""

    def __init__(self, store: Store) -> None:
        self.rollouts = RolloutStore(store)
        self._handlers = HandlerService(store)
        self._process = process_name()

    async def start(self, node_id: str, options: RolloutOptions) -> Rollout:
        """Start rolling out a canary (or a decoy, whose first stage is a shadow)."""
        record = await self._handlers.show(node_id)
        candidate = record.handler
        if candidate.model_type not in (ModelType.CANARY, ModelType.DECOY):
            raise ActionError(
                f"{node_id} is a {candidate.model_type.value}; a rollout takes a canary or a "
                "decoy (register the new version with model_type canary or decoy)"
            )
        if record.state != "active":
            raise ActionError(f"{node_id} is {record.state}; only an active handler rolls out")
        production = [
            r
            for r in await self._handlers.find(topic=candidate.event, state="active")
            if r.handler.group_id == candidate.group_id and r.handler.model_type is ModelType.MODEL
        ]
        if not production:
            raise ActionError(
                f"group {candidate.group_id} on {candidate.event} has no active production "
                "instance to compare the candidate with"
            )
        from_decoy = candidate.model_type is ModelType.DECOY
        steps = [0.0, *options.steps] if from_decoy else list(options.steps)
        first = "a shadow stage" if from_decoy else f"{steps[0]:g} % of the events"
        start = NewDecision(
            "start",
            "start",
            f"started: {first}, then {', '.join(f'{s:g} %' for s in steps[1:]) or 'promote'}",
            {"options": options.model_dump(mode="json")},
            self._process,
        )
        return await self.rollouts.create(candidate, steps, options, from_decoy, start)

    async def find(self, node_id: str | None = None, active: bool = False) -> list[Rollout]:
        """Rollouts, newest first."""
        return await self.rollouts.find(node_id, active)

    async def resolve(self, ref: str | int | None) -> Rollout:
        """A rollout by id, by its candidate's node id (its newest), or the only active one."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return await self.rollouts.get(int(ref))
        if ref:
            found = await self.rollouts.find(node_id=ref)
            if not found:
                raise ActionError(f"no rollout of {ref}")
            return found[0]
        active = await self.rollouts.find(active=True)
        if len(active) != 1:
            names = ", ".join(f"{r.id} ({r.node_id})" for r in active) or "none"
            raise ActionError(f"name the rollout: active rollouts are {names}")
        return active[0]

    async def pause(self, ref: str | int | None) -> Rollout:
        """Stop deciding; the canary keeps its share until resumed."""
        return await self._steer(ref, Status.PAUSED, (Status.RUNNING,), "pause", "paused")

    async def resume(self, ref: str | int | None) -> Rollout:
        """Decide again, in the step where the rollout was paused."""
        return await self._steer(ref, Status.RUNNING, (Status.PAUSED,), "resume", "resumed")

    async def abort(self, ref: str | int | None) -> Rollout:
        """End the rollout: the canary's traffic goes back to 0 (it stays registered)."""
        rollout = await self.resolve(ref)
        return await self.rollouts.change(
            rollout.id,
            lambda now: (
                (
                    {"status": Status.ABORTED.value, "reason": "aborted", "ended_at": _now()},
                    NewDecision("abort", "manual", "aborted by hand", {}, self._process),
                )
                if _may(now, (Status.RUNNING, Status.PAUSED), "abort")
                else None
            ),
            lambda now: [] if now.shadow_stage else [(now.node_id, {"admin_traffic": 0.0})],
        )

    async def _steer(
        self,
        ref: str | int | None,
        to: Status,
        allowed: tuple[Status, ...],
        verb: str,
        done: str,
    ) -> Rollout:
        rollout = await self.resolve(ref)
        return await self.rollouts.change(
            rollout.id,
            lambda now: (
                (
                    {"status": to.value},
                    NewDecision(verb, "manual", f"{done} by hand", {}, self._process),
                )
                if _may(now, allowed, verb)
                else None
            ),
        )

    async def view(self, rollout: Rollout, details: bool = True) -> dict[str, Any]:
        """A rollout as the API and the CLI show it; with its decisions, live figures, chart."""
        view = rollout_fields(rollout)
        if not details:
            return view
        decisions = await self.rollouts.decisions(rollout.id)
        view["decisions"] = [decision_fields(d) for d in decisions]
        view["current"] = None
        if rollout.status in (Status.RUNNING, Status.PAUSED):
            window = await window_of(self.rollouts, rollout)
            verdict = decide(window, rollout.options.limits())
            view["current"] = {
                "outcome": verdict.outcome.value,
                "rule": verdict.rule,
                "reason": verdict.reason,
                "figures": verdict.figures,
            }
        view["series"] = series(await self.rollouts.timeline(rollout.id))
        return view


def _now() -> datetime:
    return datetime.now(UTC)


def _may(rollout: Rollout, allowed: tuple[Status, ...], verb: str) -> bool:
    """Whether a manual step applies; ActionError when the rollout is past it."""
    if rollout.status in allowed:
        return True
    raise ActionError(f"rollout {rollout.id} is {rollout.status.value}: cannot {verb} it")


def rollout_fields(rollout: Rollout) -> dict[str, Any]:
    """A rollout's own fields, as plain data."""
    return {
        "id": rollout.id,
        "node_id": rollout.node_id,
        "topic": rollout.topic,
        "group_id": rollout.group_id,
        "status": rollout.status.value,
        "steps": rollout.steps,
        "step": rollout.step,
        "share": rollout.share,
        "from_decoy": rollout.from_decoy,
        "shadow_stage": rollout.shadow_stage,
        "options": rollout.options.model_dump(mode="json"),
        "reason": rollout.reason,
        "created_at": rollout.created_at.isoformat(),
        "updated_at": rollout.updated_at.isoformat(),
        "step_started_at": rollout.step_started_at.isoformat(),
        "ended_at": rollout.ended_at.isoformat() if rollout.ended_at else None,
    }


def decision_fields(decision: Decision) -> dict[str, Any]:
    """A decision as plain data."""
    return {
        "id": decision.id,
        "step": decision.step,
        "share": decision.share,
        "at": decision.at.isoformat(),
        "outcome": decision.outcome,
        "rule": decision.rule,
        "reason": decision.reason,
        "figures": decision.figures,
        "process": decision.process,
    }


def _point(counts: Counts) -> dict[str, Any]:
    p99 = quantile_s(counts.latency, 0.99)
    return {
        "calls": counts.calls,
        "errors": counts.errors,
        "error_rate": counts.errors / counts.calls if counts.calls else None,
        "p99_ms": None if p99 is None else round(p99 * 1000, 3),
    }


def series(timeline: list[tuple[datetime, int, str, Counts]]) -> list[dict[str, Any]]:
    """Canary against production over time, in at most SERIES_POINTS slices."""
    if not timeline:
        return []
    first, last = timeline[0][0], timeline[-1][0]
    span_s = max(1.0, (last - first).total_seconds())
    slice_s = max(1.0, math.ceil(span_s / SERIES_POINTS))
    slices: dict[int, tuple[int, Counts, Counts]] = {}
    for at, step, role, counts in timeline:
        index = int((at - first).total_seconds() // slice_s)
        _, canary, production = slices.setdefault(index, (step, Counts(), Counts()))
        (canary if role == CANARY else production).add(counts)
        slices[index] = (max(step, slices[index][0]), canary, production)
    return [
        {
            "at": (first.timestamp() + index * slice_s),
            "step": step,
            "canary": _point(canary),
            "production": _point(production),
        }
        for index, (step, canary, production) in sorted(slices.items())
    ]

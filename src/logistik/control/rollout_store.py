"""Rollouts in the handler store: their state, per-window counts and decisions, in SQL."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from logistik.control.rollout_model import (
    ACTIVE,
    Decision,
    Rollout,
    RolloutOptions,
    Status,
)
from logistik.control.rollout_rules import Window
from logistik.control.store import Base, HandlerRow, Store
from logistik.errors import ActionError, StoreError
from logistik.handler import Handler
from logistik.routing.rollout_tally import CANARY, Counts

ID = BigInteger().with_variant(Integer(), "sqlite")
# Held while a rollout is started, so that two starts cannot both take one group.
START_LOCK = 5657
# Count rows older than this are summed once: a transaction that writes counts takes far less.
SETTLED_S = 30.0


class RolloutNotFoundError(StoreError):
    """No rollout has the given id."""


def process_name() -> str:
    """A name for one logistik process (or one router in it), as its counts are stored."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    """A time with its zone (SQLite gives them back without; they are UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class RolloutRow(Base):
    """One rollout as stored."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(255), index=True)
    topic: Mapped[str] = mapped_column(String(255))
    group_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True)
    steps: Mapped[list[float]] = mapped_column(JSON)
    step: Mapped[int] = mapped_column(Integer)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    from_decoy: Mapped[bool] = mapped_column(Boolean)
    revision: Mapped[int] = mapped_column(Integer)  # raised by every change: one writer wins
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    step_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CountRow(Base):
    """One process's counts of one role in one window (one flush) of a rollout step."""

    __tablename__ = "rollout_counts"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(ID, ForeignKey("rollouts.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    process: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)


class DecisionRow(Base):
    """One decision of a rollout, with the figures it was taken from."""

    __tablename__ = "rollout_decisions"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(
        ID, ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    step: Mapped[int] = mapped_column(Integer)
    share: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    process: Mapped[str] = mapped_column(String(255))


@dataclass(frozen=True)
class NewDecision:
    """A decision about to be recorded."""

    outcome: str
    rule: str
    reason: str
    figures: dict[str, Any]
    process: str


def counts_of(data: dict[str, Any]) -> Counts:
    """Counts from their stored JSON."""
    return Counts(
        int(data.get("calls", 0)),
        int(data.get("errors", 0)),
        int(data.get("timeouts", 0)),
        float(data.get("latency_sum_s", 0.0)),
        {int(k): int(v) for k, v in (data.get("latency") or {}).items()},
        int(data.get("compared", 0)),
        int(data.get("agreed", 0)),
    )


def _rollout(row: RolloutRow) -> Rollout:
    return Rollout(
        row.id,
        row.node_id,
        row.topic,
        row.group_id,
        Status(row.status),
        [float(s) for s in row.steps],
        row.step,
        RolloutOptions.model_validate(row.options),
        row.from_decoy,
        row.revision,
        row.reason,
        _utc(row.created_at),
        _utc(row.updated_at),
        _utc(row.step_started_at),
        _utc(row.ended_at) if row.ended_at else None,
    )


def _decision(row: DecisionRow) -> Decision:
    return Decision(
        row.id,
        row.step,
        row.share,
        _utc(row.at),
        row.outcome,
        row.rule,
        row.reason,
        dict(row.figures or {}),
        row.process,
    )


async def window_of(rollouts: RolloutStore, rollout: Rollout) -> Window:
    """The current step's window of a rollout, as the decision rule reads it.

    Production's counts are this step's; at a 100 % step without a shadow share production
    gets no events of its own, and its counts are those of every step so far.
    """
    step = await rollouts.step_counts(rollout.id, [rollout.step])
    production, production_from = step.production, "this step"
    if rollout.share >= 1.0 and rollout.options.shadow_share == 0 and rollout.step > 0:
        production = (await rollouts.step_counts(rollout.id, range(rollout.step + 1))).production
        production_from = "earlier steps"
    return Window(
        step.canary,
        production,
        max(0.0, (_now() - rollout.step_started_at).total_seconds()),
        rollout.last_step,
        rollout.shadow_stage or rollout.options.shadow_share > 0,
        production_from,
        step.processes,
    )


@dataclass
class _Settled:
    """Counts of a window's rows up to an id, summed once."""

    to_id: int = 0
    canary: Counts = field(default_factory=Counts)
    production: Counts = field(default_factory=Counts)
    processes: set[str] = field(default_factory=set)

    def fold(self, row_id: int, role: str, process: str, counts: Counts) -> None:
        """Add one row."""
        (self.canary if role == CANARY else self.production).add(counts)
        self.processes.add(process)
        self.to_id = row_id


@dataclass
class StepCounts:
    """A step's counts summed over every process: the canary's, production's, who counted."""

    canary: Counts
    production: Counts
    processes: list[str]


class RolloutStore:
    """Reads and changes rollouts; a change is written only if nobody changed the rollout since."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._sessions = async_sessionmaker(store.engine, expire_on_commit=False)
        self._settled: dict[tuple[int, tuple[int, ...]], _Settled] = {}

    @property
    def postgres(self) -> bool:
        """Whether the store is PostgreSQL (several processes may decide)."""
        return self.store.engine.dialect.name == "postgresql"

    async def create(
        self,
        candidate: Handler,
        steps: list[float],
        options: RolloutOptions,
        from_decoy: bool,
        start: NewDecision,
    ) -> Rollout:
        """Store a new rollout and its first step's traffic; ActionError if its group has one."""
        now = _now()
        async with self._sessions.begin() as session:
            if self.postgres:
                await session.execute(text(f"SELECT pg_advisory_xact_lock({START_LOCK})"))
            query = select(RolloutRow).where(
                RolloutRow.topic == candidate.event,
                RolloutRow.group_id == candidate.group_id,
                RolloutRow.status.in_([s.value for s in ACTIVE]),
            )
            running = await session.scalar(query)
            if running is not None:
                raise ActionError(
                    f"group {candidate.group_id} on {candidate.event} already has rollout "
                    f"{running.id} ({running.status}) of {running.node_id}; abort it first"
                )
            row = RolloutRow(
                node_id=candidate.node_id,
                topic=candidate.event,
                group_id=candidate.group_id,
                status=Status.RUNNING.value,
                steps=steps,
                step=0,
                options=options.model_dump(mode="json"),
                from_decoy=from_decoy,
                revision=0,
                created_at=now,
                updated_at=now,
                step_started_at=now,
            )
            session.add(row)
            await session.flush()
            self._add_decision(session, row.id, 0, steps[0] / 100, start, now)
            if not from_decoy:
                await _set_admin(session, candidate.node_id, {"admin_traffic": steps[0] / 100})
        return _rollout(row)

    async def get(self, rollout_id: int) -> Rollout:
        """One rollout; RolloutNotFoundError when there is none."""
        async with self._sessions() as session:
            row = await session.get(RolloutRow, rollout_id)
            if row is None:
                raise RolloutNotFoundError(f"no rollout {rollout_id}")
            return _rollout(row)

    async def find(self, node_id: str | None = None, active: bool = False) -> list[Rollout]:
        """Rollouts, newest first; of one node, or only those still active."""
        query = select(RolloutRow).order_by(RolloutRow.id.desc())
        if node_id is not None:
            query = query.where(RolloutRow.node_id == node_id)
        if active:
            query = query.where(RolloutRow.status.in_([s.value for s in ACTIVE]))
        async with self._sessions() as session:
            return [_rollout(row) for row in await session.scalars(query)]

    async def decisions(self, rollout_id: int) -> list[Decision]:
        """A rollout's decisions, oldest first."""
        query = (
            select(DecisionRow).where(DecisionRow.rollout_id == rollout_id).order_by(DecisionRow.id)
        )
        async with self._sessions() as session:
            return [_decision(row) for row in await session.scalars(query)]

    async def last_rule(self, rollout_id: int, step: int) -> str | None:
        """The rule of the newest decision recorded at a step."""
        query = (
            select(DecisionRow.rule)
            .where(DecisionRow.rollout_id == rollout_id, DecisionRow.step == step)
            .order_by(DecisionRow.id.desc())
            .limit(1)
        )
        async with self._sessions() as session:
            rule: str | None = await session.scalar(query)
            return rule

    async def add_counts(self, process: str, counts: dict[tuple[int, int, str], Counts]) -> None:
        """Store one process's counts since its last flush (one row per rollout step and role)."""
        if not counts:
            return
        now = _now()
        async with self._sessions.begin() as session:
            known = set(await session.scalars(select(RolloutRow.id)))
            for (rollout_id, step, role), window in counts.items():
                if rollout_id in known:  # a rollout deleted meanwhile keeps no counts
                    session.add(
                        CountRow(
                            rollout_id=rollout_id,
                            step=step,
                            process=process,
                            role=role,
                            at=now,
                            counts=window.as_json(),
                        )
                    )

    async def step_counts(self, rollout_id: int, steps: Sequence[int]) -> StepCounts:
        """The counts of some steps of a rollout, summed over every process.

        Rows written more than SETTLED_S ago are summed once and kept: a long step is not read
        again whole at every decision, only the rows since.
        """
        key = (rollout_id, tuple(steps))
        settled = self._settled.get(key) or _Settled()
        query = (
            select(CountRow)
            .where(
                CountRow.rollout_id == rollout_id,
                CountRow.step.in_(list(steps)),
                CountRow.id > settled.to_id,
            )
            .order_by(CountRow.id)
        )
        canary, production = Counts(), Counts()
        canary.add(settled.canary)
        production.add(settled.production)
        processes = set(settled.processes)
        old = _now() - timedelta(seconds=SETTLED_S)
        settling = True
        async with self._sessions() as session:
            for row in await session.scalars(query):
                counts = counts_of(row.counts)
                (canary if row.role == CANARY else production).add(counts)
                processes.add(row.process)
                # Only a run of old rows from the start settles: a later id may commit late.
                settling = settling and _utc(row.at) < old
                if settling:
                    settled.fold(row.id, row.role, row.process, counts)
        self._settled[key] = settled
        return StepCounts(canary, production, sorted(processes))

    async def timeline(self, rollout_id: int) -> list[tuple[datetime, int, str, Counts]]:
        """Every stored window of a rollout: when, which step, which role, its counts."""
        query = select(CountRow).where(CountRow.rollout_id == rollout_id).order_by(CountRow.id)
        async with self._sessions() as session:
            return [
                (_utc(row.at), row.step, row.role, counts_of(row.counts))
                for row in await session.scalars(query)
            ]

    async def apply(
        self,
        rollout: Rollout,
        values: dict[str, Any],
        decision: NewDecision | None,
        admin: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> Rollout | None:
        """Change a rollout, record the decision and change handlers, all in one transaction.

        Only if the rollout is still at the revision it was read at: of two processes that
        decide at once, one writes and the other gets None.
        """
        now = _now()
        async with self._sessions.begin() as session:
            changed = await session.execute(
                update(RolloutRow)
                .where(RolloutRow.id == rollout.id, RolloutRow.revision == rollout.revision)
                .values(**values, revision=rollout.revision + 1, updated_at=now)
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            if decision is not None:
                self._add_decision(session, rollout.id, rollout.step, rollout.share, decision, now)
            row = await session.get(RolloutRow, rollout.id, populate_existing=True)
            assert row is not None
            for node_id, state in admin:
                await _set_admin(session, node_id, state)
        return _rollout(row)

    async def end_by_hand(self, handler: Handler, action: str, process: str) -> list[Rollout]:
        """End the active rollouts of a handler's group: an operator acts on it by hand."""
        reason = f"{action} of {handler.node_id} by hand"
        ended = []
        for rollout in await self.find(active=True):
            if (rollout.topic, rollout.group_id) != (handler.event, handler.group_id):
                continue
            done = await self.change(
                rollout.id,
                lambda now: (
                    (
                        {
                            "status": Status.ENDED_BY_HAND.value,
                            "reason": reason,
                            "ended_at": _now(),
                        },
                        NewDecision("ended-by-hand", "manual", reason, {}, process),
                    )
                    if now.active
                    else None
                ),
            )
            ended.append(done)
        return ended

    async def change(
        self,
        rollout_id: int,
        change: Callable[[Rollout], tuple[dict[str, Any], NewDecision] | None],
        admin: Callable[[Rollout], Sequence[tuple[str, dict[str, Any]]]] = lambda _r: (),
    ) -> Rollout:
        """Apply a change computed from the rollout as it is now (None: no change), reading it
        again after a concurrent change (a decision taken at the same moment) until written."""
        while True:
            rollout = await self.get(rollout_id)
            wanted = change(rollout)
            if wanted is None:
                return rollout
            done = await self.apply(rollout, wanted[0], wanted[1], admin(rollout))
            if done is not None:
                return done

    @staticmethod
    def _add_decision(
        session: AsyncSession,
        rollout_id: int,
        step: int,
        share: float,
        decision: NewDecision,
        now: datetime,
    ) -> None:
        """Record a decision taken at a step (the step it ends, for an advance)."""
        session.add(
            DecisionRow(
                rollout_id=rollout_id,
                step=step,
                share=share,
                at=now,
                outcome=decision.outcome,
                rule=decision.rule,
                reason=decision.reason,
                figures=decision.figures,
                process=decision.process,
            )
        )


async def _set_admin(session: AsyncSession, node_id: str, state: dict[str, Any]) -> None:
    """Operators' state of one handler, inside a rollout's transaction."""
    row = await session.scalar(select(HandlerRow).where(HandlerRow.node_id == node_id))
    if row is None:
        return  # deleted meanwhile: the rollout's own record says what happened
    for key, value in state.items():
        setattr(row, key, value)
    row.updated_at = _now()

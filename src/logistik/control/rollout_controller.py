"""Runs rollouts inside `logistik run`: stores this process's counts, and decides when it leads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from logistik.control.handler_service import HandlerService
from logistik.control.rollout_model import Rollout, Status
from logistik.control.rollout_rules import Outcome, Verdict, decide
from logistik.control.rollout_store import NewDecision, RolloutStore, process_name, window_of
from logistik.control.store import Store
from logistik.errors import LogistikError, describe
from logistik.handler import ModelType
from logistik.observe.alerts import Alerter
from logistik.routing.rollout_tally import RolloutTally, Watched

logger = logging.getLogger(__name__)

# A session-level advisory lock on PostgreSQL: the process holding it decides every rollout.
DECIDER_LOCK = 5658
TICK_S = 0.5  # how often counts are stored and rollouts decided


class RolloutController:
    """Each tick: tells the router which groups to count, stores the counts, and decides.

    Every process stores its own counts; only the process that holds the decider lock (on
    PostgreSQL; the only process on SQLite) decides, and each decision is written only if the
    rollout did not change since it was read, so a step is decided once.
    """

    def __init__(
        self,
        store: Store,
        tally: RolloutTally,
        alerter: Alerter | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self._store = store
        self.rollouts = RolloutStore(store)
        self._tally = tally
        self._alerter = alerter
        self._tick_s = tick_s
        self.process = process_name()
        self._lock: AsyncConnection | None = None
        self.error: str | None = None  # why the last tick failed, None when it worked

    @property
    def leads(self) -> bool:
        """Whether this process decides rollouts now."""
        return self._lock is not None or not self.rollouts.postgres

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every `tick_s` until stopped; a failing store is reported and tried again."""
        try:
            while not stop.is_set():
                await self._tick_reporting()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._tick_s)
        finally:
            await self._release()

    async def flush(self) -> None:
        """Store the counts not stored yet (at exit); a failure is only logged."""
        try:
            await self.rollouts.add_counts(self.process, self._tally.drain())
        except Exception as exc:
            logger.error("cannot store the last rollout counts: %s", describe(exc))

    async def _tick_reporting(self) -> None:
        try:
            await self.tick()
        except Exception as exc:
            if self.error is None:
                logger.error("rollouts: %s; trying again", describe(exc))
            self.error = describe(exc)
            await self._release()
            return
        if self.error is not None:
            logger.info("rollouts: the store answers again")
        self.error = None

    async def tick(self) -> None:
        """Count for the active rollouts, store the counts, decide each rollout if leading."""
        active = await self.rollouts.find(active=True)
        self._tally.watch(
            Watched(
                r.id,
                r.step,
                r.topic,
                r.group_id,
                r.node_id,
                0.0 if r.shadow_stage else r.options.shadow_share,
            )
            for r in active
            if r.status is not Status.PROMOTING
        )
        await self.rollouts.add_counts(self.process, self._tally.drain())
        if active and await self._lead():
            for rollout in active:
                await self.decide(rollout)

    async def decide(self, rollout: Rollout) -> None:
        """Look at a rollout's window and act on what the rule says."""
        if rollout.status is Status.PROMOTING:
            await self._finish_promotion(rollout)
            return
        if rollout.status is not Status.RUNNING:
            return
        window = await window_of(self.rollouts, rollout)
        verdict = decide(window, rollout.options.limits())
        figures = {**verdict.figures, "step": rollout.step, "share": rollout.share}
        if verdict.outcome is Outcome.HOLD:
            await self._hold(rollout, verdict, figures)
        elif verdict.outcome is Outcome.ROLLBACK:
            await self._roll_back(rollout, verdict, figures)
        elif verdict.outcome is Outcome.ADVANCE:
            await self._advance(rollout, verdict, figures)
        else:
            await self._promote(rollout, verdict, figures)

    def _decision(self, verdict: Verdict, figures: dict[str, Any], reason: str) -> NewDecision:
        return NewDecision(verdict.outcome.value, verdict.rule, reason, figures, self.process)

    async def _hold(self, rollout: Rollout, verdict: Verdict, figures: dict[str, Any]) -> None:
        """Record a hold once per step and reason; gathering events is not news."""
        if verdict.rule == "collecting":
            return
        if await self.rollouts.last_rule(rollout.id, rollout.step) == verdict.rule:
            return
        await self.rollouts.apply(rollout, {}, self._decision(verdict, figures, verdict.reason))
        logger.info("rollout %d of %s holds: %s", rollout.id, rollout.node_id, verdict.reason)

    async def _advance(self, rollout: Rollout, verdict: Verdict, figures: dict[str, Any]) -> None:
        step = rollout.step + 1
        share = rollout.steps[step] / 100
        state: dict[str, Any] = {"admin_traffic": share}
        if rollout.shadow_stage:
            state["admin_model_type"] = ModelType.CANARY.value
        reason = f"{verdict.reason}; {share:.0%} of the events from now on"
        done = await self.rollouts.apply(
            rollout,
            {"step": step, "step_started_at": datetime.now(UTC)},
            self._decision(verdict, figures, reason),
            [(rollout.node_id, state)],
        )
        if done is not None:
            logger.info("rollout %d of %s: %s", rollout.id, rollout.node_id, reason)

    async def _roll_back(self, rollout: Rollout, verdict: Verdict, figures: dict[str, Any]) -> None:
        # A decoy never answered for production: it stays a decoy.
        admin = [] if rollout.shadow_stage else [(rollout.node_id, {"admin_traffic": 0.0})]
        done = await self.rollouts.apply(
            rollout,
            {
                "status": Status.ROLLED_BACK.value,
                "reason": verdict.reason,
                "ended_at": datetime.now(UTC),
            },
            self._decision(verdict, figures, verdict.reason),
            admin,
        )
        if done is None:
            return
        logger.warning(
            "rollout %d of %s rolled back: %s", rollout.id, rollout.node_id, verdict.reason
        )
        if self._alerter is not None:
            self._alerter.rolled_back(
                rollout.topic, rollout.group_id, rollout.node_id, verdict.reason
            )

    async def _promote(self, rollout: Rollout, verdict: Verdict, figures: dict[str, Any]) -> None:
        reason = f"{verdict.reason}; promoted to production"
        done = await self.rollouts.apply(
            rollout,
            {"status": Status.PROMOTING.value},
            self._decision(verdict, figures, reason),
        )
        if done is not None:
            await self._finish_promotion(done)

    async def _finish_promotion(self, rollout: Rollout) -> None:
        """Promote as an operator would; a promotion cut short by a restart is finished."""
        service = HandlerService(self._store)
        values: dict[str, Any] = {"status": Status.PROMOTED.value, "ended_at": datetime.now(UTC)}
        decision = None
        try:
            await service.promote(rollout.node_id, by_hand=False)
        except LogistikError as exc:
            record = await self._record_or_none(service, rollout.node_id)
            if record is None or record.handler.model_type is not ModelType.MODEL:
                why = f"the promotion failed: {describe(exc)}"
                values = {**values, "status": Status.ABORTED.value, "reason": why}
                decision = NewDecision("abort", "promotion-failed", why, {}, self.process)
        if await self.rollouts.apply(rollout, values, decision) is not None:
            logger.info("rollout %d: %s is production", rollout.id, rollout.node_id)

    @staticmethod
    async def _record_or_none(service: HandlerService, node_id: str) -> Any:
        try:
            return await service.show(node_id)
        except LogistikError:
            return None

    async def _lead(self) -> bool:
        """Whether this process decides: on PostgreSQL, whether it holds the decider lock."""
        if not self.rollouts.postgres:
            return True
        if self._lock is not None:
            await self._lock.execute(text("SELECT 1"))  # a lost connection lost the lock
            return True
        connection = await self._store.engine.connect()
        try:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            taken = await connection.scalar(text(f"SELECT pg_try_advisory_lock({DECIDER_LOCK})"))
        except BaseException:
            await connection.close()
            raise
        if not taken:
            await connection.close()
            return False
        self._lock = connection
        logger.info("this process decides rollouts (%s)", self.process)
        return True

    async def _release(self) -> None:
        """Give the decider lock up, closing its connection (a pooled one would keep it)."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            await lock.execute(text(f"SELECT pg_advisory_unlock({DECIDER_LOCK})"))
            await lock.close()
        except Exception:
            await lock.invalidate()

"""Rollouts in the store, on SQLite and PostgreSQL: counts summed across processes, one writer."""

from __future__ import annotations

import pytest

from logistik.answer import Answer, Outcome
from logistik.control import rollout_store
from logistik.control.rollout_model import RolloutOptions, Status
from logistik.control.rollout_store import NewDecision, RolloutStore
from logistik.control.store import Store
from logistik.handler import Handler
from logistik.routing.rollout_tally import CANARY, PRODUCTION, Counts


def handler(kind: str, node: str) -> Handler:
    return Handler(
        name="face",
        event="detect",
        endpoint="10.0.0.1",
        port=5000,
        node=node,
        model_type=kind,  # type: ignore[arg-type]
        return_to="out",
    )


def calls(n: int, errors: int = 0) -> Counts:
    counts = Counts()
    for i in range(n):
        outcome = Outcome.RETRY if i < errors else Outcome.OK
        counts.record(Answer(outcome, 200, latency_s=0.01))
    return counts


async def test_counts_of_every_process_are_summed_and_old_rows_are_read_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await Store.open(database_url)
    try:
        canary = handler("canary", "1")
        await store.add(handler("model", "0"))
        await store.add(canary)
        rollouts = RolloutStore(store)
        start = NewDecision("start", "start", "started", {}, "test")
        rollout = await rollouts.create(canary, [10.0, 100.0], RolloutOptions(), False, start)
        assert (await store.get(canary.node_id)).handler.traffic == 0.1
        await rollouts.add_counts("a", {(rollout.id, 0, CANARY): calls(10, 2)})
        await rollouts.add_counts("b", {(rollout.id, 0, PRODUCTION): calls(90)})
        monkeypatch.setattr(rollout_store, "SETTLED_S", 0.0)  # every row written is settled
        first = await rollouts.step_counts(rollout.id, [0])
        await rollouts.add_counts("b", {(rollout.id, 0, CANARY): calls(5, 1)})
        await rollouts.add_counts("b", {(rollout.id, 1, CANARY): calls(7)})
        second = await rollouts.step_counts(rollout.id, [0])
        assert (first.canary.calls, first.canary.errors, first.production.calls) == (10, 2, 90)
        assert (second.canary.calls, second.canary.errors, second.processes) == (15, 3, ["a", "b"])
        assert (await RolloutStore(store).step_counts(rollout.id, [0])).canary.calls == 15
    finally:
        await store.close()


async def test_of_two_decisions_on_one_revision_one_is_written(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        canary = handler("canary", "1")
        await store.add(handler("model", "0"))
        await store.add(canary)
        rollouts = RolloutStore(store)
        start = NewDecision("start", "start", "started", {}, "test")
        rollout = await rollouts.create(canary, [10.0, 100.0], RolloutOptions(), False, start)
        advance = NewDecision("advance", "passed", "every check passed", {}, "a")
        first = await rollouts.apply(
            rollout, {"step": 1}, advance, [(canary.node_id, {"admin_traffic": 1.0})]
        )
        second = await rollouts.apply(
            rollout, {"status": Status.ROLLED_BACK.value}, advance, [(canary.node_id, {})]
        )
        assert first is not None and first.step == 1 and second is None
        assert [d.outcome for d in await rollouts.decisions(rollout.id)] == ["start", "advance"]
        assert (await rollouts.get(rollout.id)).status is Status.RUNNING
        assert (await store.get(canary.node_id)).handler.traffic == 1.0
    finally:
        await store.close()

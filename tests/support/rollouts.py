"""Rollout tests' helpers: a steady flow of events, and a rollout as the API shows it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from logistik.control.rollout_model import RolloutOptions
from logistik.control.rollout_service import RolloutService, with_rollouts
from logistik.control.store import Store
from tests.support.kafkatools import event, event_producer

ENDED = ("promoted", "rolled-back", "aborted", "ended-by-hand")
POLL_S = 0.2


class EventFlow:
    """Produces events to a topic at a steady rate in a thread until stopped; keeps their ids."""

    def __init__(self, servers: str, topic: str, per_s: float = 200.0, batch: int = 10) -> None:
        self._producer = event_producer(servers, linger_ms=2)
        self._topic = topic
        self._pause_s = batch / per_s
        self._batch = batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent: list[str] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(self._batch):
                value = event()
                self._producer.produce(self._topic, orjson.dumps(value))
                self.sent.append(value["id"])
            self._producer.poll(0)
            self._stop.wait(self._pause_s)
        assert self._producer.flush(20) == 0, "events not acknowledged by the broker"

    def __enter__(self) -> EventFlow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[str]:
        """Stop producing; returns the ids of every event sent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        return self.sent


def start_rollout(url: str, node_id: str, **options: Any) -> int:
    """Start a rollout through the service, as the CLI and the API do; returns its id."""

    async def start(service: RolloutService) -> int:
        rollout = await service.start(node_id, RolloutOptions.model_validate(options))
        return rollout.id

    return asyncio.run(with_rollouts(url, start))


def rollout_view(url: str, rollout_id: int) -> dict[str, Any]:
    """A rollout with its decisions and figures, as the API shows it."""

    async def view(service: RolloutService) -> dict[str, Any]:
        return await service.view(await service.rollouts.get(rollout_id))

    return asyncio.run(with_rollouts(url, view))


def wait_for_rollout(
    url: str,
    rollout_id: int,
    timeout_s: float = 45.0,
    until: Callable[[dict[str, Any]], bool] | None = None,
    **wanted: Any,
) -> dict[str, Any]:
    """Wait until a rollout's fields have the wanted values (e.g. status="promoted") and
    `until` holds for it; returns the rollout as the API shows it."""
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(url))  # once: opening migrates, which costs
    service = RolloutService(store)
    seen: dict[str, Any] = {}

    def reached() -> bool:
        rollout = loop.run_until_complete(service.rollouts.get(rollout_id))
        seen.update(loop.run_until_complete(service.view(rollout)))
        fields = all(seen.get(key) == value for key, value in wanted.items())
        return fields and (until is None or until(seen))

    started = time.monotonic()
    try:
        while not reached():
            if time.monotonic() - started > timeout_s:
                decisions = [summary(d) for d in seen.get("decisions", []) if d["figures"]]
                now = (seen.get("current") or {}).get("reason")
                raise AssertionError(
                    f"rollout {rollout_id} after {timeout_s:g} s: {seen.get('status')} at step "
                    f"{seen.get('step')}; decisions {decisions}; now: {now}"
                )
            time.sleep(POLL_S)
    finally:
        loop.run_until_complete(store.close())
        loop.close()
    return seen


def decisions_of(view: dict[str, Any], *outcomes: str) -> list[dict[str, Any]]:
    """A rollout's decisions with the given outcomes (all without any)."""
    return [d for d in view["decisions"] if not outcomes or d["outcome"] in outcomes]


def summary(decision: dict[str, Any]) -> str:
    """One decision in a line: outcome, rule, canary and production figures."""
    figures = decision["figures"]
    canary, production = figures.get("canary", {}), figures.get("production", {})
    return (
        f"step {decision['step']} ({decision['share']:.0%}): {decision['outcome']} by "
        f"{decision['rule']} after {canary.get('calls')} canary calls "
        f"({canary.get('errors')} errors, p50 {canary.get('p50_ms')} ms, p99 "
        f"{canary.get('p99_ms')} ms, agreement "
        f"{canary.get('agreement')} of {canary.get('compared')}) against production's "
        f"{production.get('calls')} ({production.get('errors')} errors, p50 "
        f"{production.get('p50_ms')} ms, p99 {production.get('p99_ms')} ms); {decision['reason']}"
    )

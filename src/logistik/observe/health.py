"""Readiness: the broker answers, the store answers, the producer works, the loop is turning."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka.admin import AdminClient

from logistik.config import KafkaConfig
from logistik.control.store import Store
from logistik.errors import BrokerError, LogistikError
from logistik.kafka import base_config, list_topics

CHECK_TIMEOUT_S = 2.0
CACHE_S = 1.0


class Readiness:
    """Checks what the router needs to do its job; results are cached for a second."""

    def __init__(
        self,
        kafka: KafkaConfig,
        store: Store,
        loop_age_s: Callable[[], float | None],
        tasks: Callable[[], dict[str, dict[str, Any]]] | None = None,
        producer: Callable[[], tuple[str, str] | None] | None = None,
        waiting: Callable[[], str | None] | None = None,
        errors: Callable[[], Mapping[str, str | None]] | None = None,
        not_fetched: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._kafka = kafka
        # Quiet: what an absent broker means is this check's detail, not librdkafka's lines.
        self._admin: AdminClient | None = AdminClient(
            base_config(kafka.bootstrap_servers, quiet=True)
        )
        self._store = store
        self._loop_age_s = loop_age_s
        self._tasks = tasks
        self._producer = producer  # (state, detail) of the producer, None before it exists
        self._waiting = waiting  # why start-up is still waiting, None once it is not
        self._errors = errors  # tasks that run but fail and retry (task name -> why, or None)
        self._not_fetched = not_fetched  # partitions whose records no fetch brings
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> dict[str, Any]:
        """`{"ready": bool, "checks": {name: {"ok": bool, "detail": str}}}`."""
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < CACHE_S:
                return self._cached[1]
            checks = {
                "broker": await self._broker(),
                "store": await self._store_check(),
                "consuming": self._consuming(),
            }
            if self._not_fetched is not None:
                checks["fetching"] = self._fetching(self._not_fetched())
            if self._producer is not None:
                checks["producer"] = self._producer_check(self._producer())
            if self._tasks is not None:
                checks.update(self._tasks())
            for name, error in (self._errors() if self._errors is not None else {}).items():
                if error is not None:
                    checks[name] = {"ok": False, "detail": f"retrying with back-off: {error}"}
            result = {"ready": all(c["ok"] for c in checks.values()), "checks": checks}
            self._cached = (now, result)
            return result

    def close(self) -> None:
        """Release the broker client (its threads); the broker check fails from then on."""
        self._admin = None

    async def _broker(self) -> dict[str, Any]:
        admin = self._admin
        if admin is None:
            return {"ok": False, "detail": "stopped"}
        try:
            topics = await asyncio.to_thread(
                list_topics, admin, self._kafka.bootstrap_servers, CHECK_TIMEOUT_S
            )
        except BrokerError as exc:
            return {"ok": False, "detail": str(exc)}
        return {"ok": True, "detail": f"{self._kafka.bootstrap_servers} ({len(topics)} topics)"}

    async def _store_check(self) -> dict[str, Any]:
        try:
            await asyncio.wait_for(self._store.ping(), CHECK_TIMEOUT_S)
        except (LogistikError, TimeoutError) as exc:
            return {"ok": False, "detail": str(exc) or "the store did not answer in time"}
        return {"ok": True, "detail": "answers"}

    def _producer_check(self, found: tuple[str, str] | None) -> dict[str, Any]:
        if found is None:
            return {"ok": False, "detail": "not started"}
        state, detail = found
        return {"ok": state == "ok", "detail": detail if state == "ok" else f"{state}: {detail}"}

    @staticmethod
    def _fetching(stalls: list[dict[str, Any]]) -> dict[str, Any]:
        if not stalls:
            return {"ok": True, "detail": "every partition's records come"}
        return {"ok": False, "detail": "; ".join(s["detail"] for s in stalls)}

    def _consuming(self) -> dict[str, Any]:
        age_s = self._loop_age_s()
        if age_s is None:
            waiting = None if self._waiting is None else self._waiting()
            return {"ok": False, "detail": waiting or "not started"}
        if age_s > 10.0:
            return {"ok": False, "detail": f"the consume loop has not turned for {age_s:.0f} s"}
        return {"ok": True, "detail": "polling"}

"""Whether each model accepts connections: probed when it is added, again while it does not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from logistik.errors import describe
from logistik.handler import Handler
from logistik.routing.registry import Registry

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
RECHECK_S = 15.0  # how often a model that could not be reached is probed again


@dataclass(frozen=True)
class Reach:
    """What one probe found: whether the model accepts connections, and what it said."""

    ok: bool
    detail: str  # the error when not reachable, else what answered
    at: float  # wall-clock time of the probe

    def view(self) -> dict[str, Any]:
        """As the API shows it."""
        return {
            "ok": self.ok,
            "detail": self.detail,
            "checked_at": datetime.fromtimestamp(self.at, UTC).isoformat(),
        }


async def probe(handler: Handler, timeout_s: float = PROBE_TIMEOUT_S) -> Reach:
    """Open a connection to a model's address and close it again.

    Only a connection: a request would count in the model's own figures (its uWSGI requests,
    its access log), and whatever it answers, a model that accepts connections is there.
    """
    address = f"{handler.endpoint}:{handler.port}"
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(handler.endpoint, handler.port), timeout_s
        )
    except TimeoutError:
        return Reach(False, f"cannot connect to {address}: no answer within {timeout_s:g} s", now())
    except OSError as exc:
        return Reach(False, f"cannot connect to {address}: {_reason(exc)}", now())
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Reach(True, f"accepts connections at {address}", now())


def _reason(exc: OSError) -> str:
    """Why a connection failed, as the system says it ("Connection refused")."""
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return exc.strerror or describe(exc)
    return os.strerror(exc.errno)


def now() -> float:
    """The wall-clock time, for people to read."""
    return time.time()


class Reachability:
    """Probes every routed model once when it appears, and again while it cannot be reached.

    An unreachable model is said in one warning line, and shown in the API and the UI; it
    does not make the process unready: routing goes on, and its events are retried.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._found: dict[str, Reach] = {}

    def get(self, node_id: str) -> Reach | None:
        """The last probe of a model, None before its first."""
        return self._found.get(node_id)

    def unreachable(self) -> list[str]:
        """Node ids of routed models the last probe could not reach."""
        return sorted(n for n, reach in self._found.items() if not reach.ok)

    async def check(self) -> None:
        """Probe models new since the last check, and unreachable ones due for another try."""
        handlers = {h.node_id: h for h in self._registry.handlers()}
        for node_id in set(self._found) - set(handlers):
            del self._found[node_id]
        due = [
            h
            for node_id, h in handlers.items()
            if (last := self._found.get(node_id)) is None
            or (not last.ok and now() - last.at >= RECHECK_S)
        ]
        if not due:
            return
        found = await asyncio.gather(*(probe(h) for h in due))
        for handler, reach in zip(due, found, strict=True):
            self._report(handler, self._found.get(handler.node_id), reach)
            self._found[handler.node_id] = reach

    def _report(self, handler: Handler, before: Reach | None, reach: Reach) -> None:
        who = f"{handler.name} ({handler.node_id}, now {handler.model_type.value})"
        if not reach.ok and (before is None or before.ok):
            logger.warning(
                "model %s cannot be reached: %s; its events are retried, then go to %s",
                who,
                reach.detail,
                handler.failed_topic_name,
            )
        elif reach.ok and before is not None and not before.ok:
            logger.info("model %s can be reached again", who)

    async def watch(self, stop: asyncio.Event, interval_s: float) -> None:
        """Check every `interval_s` until stopped; never ends on its own."""
        while not stop.is_set():
            try:
                await self.check()
            except Exception as exc:  # a probe must never stop the process
                logger.warning("cannot probe the models: %s", describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

"""Micro-batching: calls to a model that takes batches gathered into one request per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from logistik.answer import Answer
from logistik.handler import Handler

# Sends one batch: the handler, the events' bodies, the request's timeout and trace headers.
BatchSender = Callable[
    [Handler, list[bytes], float, dict[str, str] | None], Awaitable[list[Answer]]
]


@dataclass(eq=False, slots=True)
class Batch:
    """Events waiting to go to one handler in one request, each with the future of its answer."""

    handler: Handler
    bodies: list[bytes] = field(default_factory=list)
    futures: list[asyncio.Future[Answer]] = field(default_factory=list)
    timeout_s: float = 0.0  # the shortest deadline among its events
    headers: dict[str, str] | None = None  # the first event's trace context
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """Gathers calls to each batching handler into requests of up to `batch_max_size` events.

    A batch goes when it is full, or `batch_max_wait_ms` after its first event, whichever
    comes first: at low rates an event waits at most that long for company. Each caller gets
    its own event's answer; a call that failed is retried on its own by the router, so the
    events of its request that succeeded are never sent again.
    """

    def __init__(self, send: BatchSender) -> None:
        self._send = send
        self._open: dict[str, Batch] = {}  # by node id: the batch still taking events
        self._sending: set[asyncio.Task[None]] = set()

    async def call(
        self, handler: Handler, body: bytes, timeout_s: float, headers: dict[str, str] | None
    ) -> Answer:
        """Add one event to the handler's open batch and wait for its answer."""
        loop = asyncio.get_running_loop()
        batch = self._open.get(handler.node_id)
        if batch is None or batch.handler is not handler:
            if batch is not None:  # the handler changed: what was gathered goes as it was
                self._flush(batch)
            batch = Batch(handler, timeout_s=timeout_s, headers=headers)
            self._open[handler.node_id] = batch
            batch.timer = loop.call_later(handler.batch_wait_s, self._flush, batch)
        future: asyncio.Future[Answer] = loop.create_future()
        batch.bodies.append(body)
        batch.futures.append(future)
        batch.timeout_s = min(batch.timeout_s, timeout_s)
        if len(batch.bodies) >= handler.batch_size:
            self._flush(batch)
        return await future

    def _flush(self, batch: Batch) -> None:
        """Close a batch to new events and send it."""
        if self._open.get(batch.handler.node_id) is batch:
            del self._open[batch.handler.node_id]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if not batch.futures:
            return
        futures, batch.futures = batch.futures, []  # flushed once, even if asked twice
        task = asyncio.get_running_loop().create_task(self._deliver(batch, futures))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, batch: Batch, futures: list[asyncio.Future[Answer]]) -> None:
        """Send a batch and hand each caller its answer; callers gone meanwhile are left out."""
        wanted = [i for i, future in enumerate(futures) if not future.done()]
        if not wanted:
            return
        bodies = [batch.bodies[i] for i in wanted]
        try:
            answers = await self._send(batch.handler, bodies, batch.timeout_s, batch.headers)
            if len(answers) != len(wanted):
                raise RuntimeError(f"{len(answers)} answer(s) for a batch of {len(wanted)}")
        except asyncio.CancelledError:
            for i in wanted:
                futures[i].cancel()
            raise
        except Exception as exc:  # a bug, not a model's fault: each caller records its event
            for i in wanted:
                if not futures[i].done():
                    futures[i].set_exception(exc)
            return
        for i, answer in zip(wanted, answers, strict=True):
            if not futures[i].done():
                futures[i].set_result(answer)

    async def close(self) -> None:
        """Cancel batches not sent yet and requests under way (their callers are cancelled)."""
        for batch in list(self._open.values()):
            if batch.timer is not None:
                batch.timer.cancel()
            for future in batch.futures:
                future.cancel()
        self._open.clear()
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

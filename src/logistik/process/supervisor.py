"""Supervision of a process's background tasks: none may end unnoticed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from logistik.errors import describe

logger = logging.getLogger(__name__)


class Supervisor:
    """Runs the tasks a process depends on; one that ends before `halt` stops the process.

    A half-alive process (answering /healthz while routing nothing) is the worst failure a
    router can have, so a task that fails or returns early sets `halt` and is reported in one
    line; the process then stops and exits non-zero. Tasks that can recover by themselves
    (reloading the store, watching Consul) retry inside and never end on their own.
    """

    def __init__(self, halt: asyncio.Event) -> None:
        self._halt = halt
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failure: str | None = None

    def start(self, name: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` as the task `name`, watched until the process stops."""
        task = asyncio.create_task(work, name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._ended(name, done))
        return task

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None and self._halt.is_set():
            return  # stopped as asked
        what = "ended" if error is None else f"failed: {describe(error)}"
        if error is not None:
            logger.debug("%s failed", name, exc_info=error)
        if self.failure is None:
            self.failure = f"{name} {what}"
        logger.critical("%s %s; logistik stops (exit code 1)", name, what)
        self._halt.set()

    def status(self) -> dict[str, dict[str, Any]]:
        """Each task: whether it runs, and why not."""
        result = {}
        for name, task in self._tasks.items():
            if not task.done():
                result[name] = {"ok": True, "detail": "running"}
            elif task.cancelled() or (error := task.exception()) is None:
                result[name] = {"ok": False, "detail": "stopped"}
            else:
                result[name] = {"ok": False, "detail": f"failed: {describe(error)}"}
        return result

    async def join(self, name: str) -> None:
        """Wait for one task to end (its errors are reported by the supervisor, not raised)."""
        task = self._tasks.get(name)
        if task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    async def cancel(self, *names: str) -> None:
        """Cancel the named tasks (those still running) and wait for them."""
        pending = [t for n, t in self._tasks.items() if n in names and not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel the tasks still running and wait for them."""
        pending = [t for t in self._tasks.values() if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

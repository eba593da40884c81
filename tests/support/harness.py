"""Runs logistik's router for tests: in a thread of the test process, or as a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import yaml

from logistik.config import Config
from logistik.control.handler_service import HandlerService, with_service
from logistik.kafka.embedded import free_port
from logistik.process import Runner
from tests.support.kafkatools import group_session, unique

T = TypeVar("T")


def make_config(servers: str, handlers: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    """A config tree for tests: a fresh consumer group, fast joins, quick retries."""
    routing = {
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.2,
        "shutdown_grace_s": 10,
        **sections.pop("routing", {}),
    }
    session = group_session(servers)
    kafka = {
        "bootstrap_servers": servers,
        "group_id": unique("logistik"),
        "session_timeout_ms": session["session.timeout.ms"],
        "partitions": 1,
        **sections.pop("kafka", {}),
    }
    kafka["consumer"] = {
        "heartbeat.interval.ms": session["heartbeat.interval.ms"],
        **kafka.get("consumer", {}),
    }
    return {
        "kafka": kafka,
        "routing": routing,
        "discovery": {"handlers": handlers, **sections.pop("discovery", {})},
        "webhook": {"interval_s": 0, **sections.pop("webhook", {})},
        "web": {"port": free_port(), **sections.pop("web", {})},
        "database": {
            "url": f"sqlite:///{tempfile.mkdtemp(prefix='lk-db-')}/logistik.db",
            **sections.pop("database", {}),
        },
        **sections,
    }


def handler(name: str, topic: str, port: int, **fields: Any) -> dict[str, Any]:
    """A static handler entry for a test model server."""
    return {
        "name": name,
        "event": topic,
        "endpoint": "127.0.0.1",
        "port": port,
        "path": "/predict",
        "return_to": f"{topic}-results",
        **fields,
    }


def on_store(url: str, action: Callable[[HandlerService], Coroutine[Any, Any, T]]) -> T:
    """Run one service action against a router's store, as the CLI would."""

    return asyncio.run(with_service(url, action))


class RouterThread:
    """logistik's Runner on its own event loop in a background thread."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = Config.model_validate(config)
        self.runner: Runner | None = None
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> RouterThread:
        """Start routing; returns once the consumer has polled once."""
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("router did not start")
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        except BaseException as exc:
            self.error = exc
            self._started.set()
        finally:
            # Its executor's threads would outlive the router, one more per test.
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        self.runner = Runner(self.config)
        task = asyncio.create_task(self.runner.run(self._stop))
        ready = asyncio.create_task(self.runner.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        self._started.set()
        await task

    def settled(self) -> bool:
        """Whether nothing is in flight and every retry written was taken back and handled."""
        runner = self.runner
        if runner is None or runner.loop is None:
            return False
        figures = runner.figures
        return (
            runner.loop.in_flight == 0
            and runner.loop.waiting_retries == 0
            and sum(figures.deferred.values()) == sum(figures.retried.values())
        )

    def describe(self) -> str:
        """One line on where the router's events are: counted in, published, deferred, in
        flight, and each instance's calls and queue (read from the test's thread)."""
        runner = self.runner
        if runner is None or runner.loop is None:
            return "router: not consuming yet"
        figures, loop = runner.figures, runner.loop
        calls = {node_id: f.requests for node_id, f in list(figures.handlers.items())}
        instances = ", ".join(
            f"{i.node_id} {calls.get(i.node_id, 0)} calls, {i.in_flight} in flight, "
            f"{i.slots.waiting} queued"
            for i in runner.registry.live()
        )
        return (
            f"router: events in {dict(figures.events_in)}, published {dict(figures.published)}, "
            f"deferred {dict(figures.deferred)}, retried {dict(figures.retried)}, "
            f"{loop.in_flight} in flight, {loop.waiting_retries} retries waiting; {instances}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop routing gracefully and wait for the thread to end."""
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # it closed meanwhile: the router ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "router did not stop"
        if self.error is not None:
            raise self.error


class RouterProcess:
    """`logistik run` as a real subprocess, with its log kept in a file."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config_path = workdir / f"{unique('logistik')}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.config_path.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RouterProcess:
        """Start the process."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "logistik", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        return self

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal."""
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 30.0) -> int:
        """Wait for exit and return the exit code; a process still running fails the test with
        the end of its log, which says where it is."""
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running after {timeout_s:g} s; its log ends:\n{self.log()[-4000:]}"
            ) from None

    def workers_assigned(self, count: int) -> bool:
        """Whether each of `count` workers (`run --workers`) has been given partitions: the
        first to join a group may take them all until the others have joined."""
        log = self.log()
        return all(
            re.search(rf"\[worker {k}\] logistik\.kafka\.consumer: assigned (?!nothing)", log)
            for k in range(count)
        )

    def kill(self) -> None:
        """Kill -9 if still running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

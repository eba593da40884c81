"""`logistik run --workers N`: N routers of one consumer group on one host, shown as one.

The parent starts the workers and restarts one that exits; worker 0 (the front) serves the
web UI, API and /metrics on the configured port and shows there the figures of every worker,
which it reads each second from the others over Unix sockets in a private directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from logistik.children import die_with_parent
from logistik.observe.figures import Figures

logger = logging.getLogger(__name__)

POLL_S = 1.0  # how often the front reads the other workers
STALE_S = 5.0  # a worker not read for this long is shown as not ready
FETCH_TIMEOUT_S = 2.0
RESTARTS = 5  # a worker restarted this many times within RESTART_WINDOW_S stops them all
RESTART_WINDOW_S = 600.0
RESTART_DELAY_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_EXTRA_S = 30.0  # beyond shutdown_grace_s, how long a stopping worker may take to exit
SNAPSHOT_PATH = "/worker"


@dataclass(frozen=True)
class WorkerRole:
    """Which of the N workers this process is, and where the workers' sockets are."""

    index: int
    count: int
    directory: Path

    @property
    def front(self) -> bool:
        """Whether this worker serves the web UI, API and /metrics for all of them."""
        return self.index == 0

    def socket_path(self, index: int) -> Path:
        """Where worker `index` answers the front."""
        return self.directory / f"worker-{index}.sock"


def unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket only this user can reach."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a worker that was killed
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    path.chmod(0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


def snapshot_app(snapshot: Callable[[], dict[str, Any]]) -> Starlette:
    """The one route a worker other than the front serves: its figures and status."""

    async def worker(_request: Request) -> Response:
        return Response(orjson.dumps(snapshot()), media_type="application/json")

    return Starlette(routes=[Route(SNAPSHOT_PATH, worker)])


@dataclass
class PeerView:
    """What the front last read of one other worker."""

    index: int
    snapshot: dict[str, Any] | None = None
    read_at: float | None = None  # monotonic time of the last good read
    error: str | None = None

    def fresh(self, now: float) -> bool:
        """Whether the last good read is recent enough to show."""
        return self.read_at is not None and now - self.read_at <= STALE_S


@dataclass
class Peers:
    """The other workers as the front sees them: their figures added to its own each second."""

    role: WorkerRole
    own: Figures  # the front's own figures, counted by its router
    shown: Figures  # every worker's figures, summed: what the web and /metrics show
    views: dict[int, PeerView] = field(init=False)

    def __post_init__(self) -> None:
        self.views = {k: PeerView(k) for k in range(1, self.role.count)}
        self.shown.refill([self.own.raw()])

    async def watch(self, halt: asyncio.Event) -> None:
        """Read every other worker each second until halted; never ends on its own."""
        sessions = {
            k: aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.role.socket_path(k))),
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S),
            )
            for k in self.views
        }
        try:
            while not halt.is_set():
                await asyncio.gather(*(self._read(k, s) for k, s in sessions.items()))
                self.refresh()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(halt.wait(), POLL_S)
        finally:
            for session in sessions.values():
                await session.close()

    async def _read(self, index: int, session: aiohttp.ClientSession) -> None:
        view = self.views[index]
        try:
            async with session.get(f"http://worker{SNAPSHOT_PATH}") as response:
                response.raise_for_status()
                view.snapshot = orjson.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            if view.error is None:
                logger.warning("worker %d does not answer the front: %s", index, _said(exc))
            view.error = _said(exc)
            return
        if view.error is not None:
            logger.info("worker %d answers the front again", index)
        view.read_at, view.error = time.monotonic(), None

    def refresh(self) -> None:
        """Sum the front's own figures and the other workers' last ones into `shown`."""
        raws = [self.own.raw()]
        raws += [snapshot["figures"] for snapshot in self._live()]
        self.shown.refill(raws)

    def _live(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            v.snapshot
            for v in self.views.values()
            if v.snapshot and v.fresh(now) and v.error is None
        ]

    def tasks(self) -> dict[str, dict[str, Any]]:
        """One readiness check per other worker: read lately, consuming, its tasks running."""
        now = time.monotonic()
        checks = {}
        for index, view in self.views.items():
            name = f"worker {index}"
            if view.error is not None and view.snapshot is not None:
                checks[name] = {"ok": False, "detail": f"does not answer: {view.error}"}
                continue
            if view.snapshot is None or not view.fresh(now):
                since = "yet" if view.read_at is None else f"for {now - view.read_at:.0f} s"
                detail = f"not read {since}" + (f" ({view.error})" if view.error else "")
                checks[name] = {"ok": False, "detail": detail}
                continue
            status = view.snapshot["status"]
            broken = [n for n, t in status["tasks"].items() if not t["ok"]]
            if broken:
                detail = "; ".join(f"{n}: {status['tasks'][n]['detail']}" for n in broken)
                checks[name] = {"ok": False, "detail": detail}
            elif not status["consuming"]:
                checks[name] = {"ok": False, "detail": "not consuming yet"}
            else:
                checks[name] = {"ok": True, "detail": f"pid {view.snapshot['pid']}, consuming"}
        return checks

    def status(self, own: dict[str, Any]) -> dict[str, Any]:
        """The front's status with every worker's in-flight events, retries and state."""
        live = self._live()
        statuses = [own, *(s["status"] for s in live)]
        checks = self.tasks()
        workers = [{"index": 0, "pid": os.getpid(), "ok": own["consuming"], "detail": ""}]
        workers += [
            {
                "index": index,
                "pid": None if view.snapshot is None else view.snapshot["pid"],
                "ok": checks[f"worker {index}"]["ok"],
                "detail": checks[f"worker {index}"]["detail"],
            }
            for index, view in self.views.items()
        ]
        return {
            **own,
            "consuming": all(w["ok"] for w in workers),
            "in_flight": sum(s["in_flight"] for s in statuses),
            "max_in_flight": own["max_in_flight"] * self.role.count,
            "retries": {
                "waiting": sum(s["retries"]["waiting"] for s in statuses),
                "deferred": dict(self.shown.deferred),
                "taken_back": dict(self.shown.retried),
            },
            "tasks": {**own["tasks"], **checks},
            "workers": workers,
            "not_fetched": self.not_fetched(own["not_fetched"]),
        }

    def not_fetched(self, own: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every worker's partitions whose records no fetch brings (each reads its own)."""
        return [*own, *(d for s in self._live() for d in s["status"].get("not_fetched", []))]

    def lag(self, own: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Every worker's consumer lag (each partition is read by one of them)."""
        combined = dict(own)
        for snapshot in self._live():
            combined.update({(t, p): n for t, p, n in snapshot["lag"]})
        return combined

    def in_flight(self, node_id: str, own: int) -> int:
        """Calls to one model in flight in every worker."""
        return own + sum(int(s["instances"].get(node_id, 0)) for s in self._live())


def _said(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------------ the parent


@dataclass
class Worker:
    """One worker process as the parent runs it."""

    index: int
    process: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of its restarts


async def run_pool(
    argv: Sequence[str],
    count: int,
    grace_s: float,
    stop: asyncio.Event,
    restart_delays_s: Sequence[float] = RESTART_DELAY_S,
) -> int:
    """Run `count` workers (`argv` plus each one's role) until `stop`; the exit code.

    A worker that exits while the pool runs is restarted after a pause, said in one line;
    one that exits RESTARTS times within RESTART_WINDOW_S stops the pool with exit code 1.
    """
    with tempfile.TemporaryDirectory(prefix="logistik-workers-") as directory:
        os.chmod(directory, 0o700)
        workers = [Worker(k) for k in range(count)]

        async def start(worker: Worker) -> None:
            role = ["--worker", f"{worker.index}/{count}", "--worker-dir", directory]
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "logistik",
                "run",
                *argv,
                *role,
                start_new_session=True,  # signals reach workers through the parent only
                preexec_fn=die_with_parent,
            )

        for worker in workers:
            await start(worker)
        logger.info(
            "started %d workers (pids %s)",
            count,
            ", ".join(str(w.process.pid) for w in workers if w.process is not None),
        )
        failure = await _supervise(workers, start, stop, restart_delays_s)
        code = await _stop_all(workers, grace_s + STOP_EXTRA_S)
    if failure is not None:
        logger.critical("%s; logistik stops (exit code 1)", failure)
        return 1
    return code


async def _supervise(
    workers: list[Worker],
    start: Callable[[Worker], Any],
    stop: asyncio.Event,
    delays_s: Sequence[float],
) -> str | None:
    """Restart workers that exit until `stop` is set; why the pool must stop, or None."""
    stopping = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            exits = {
                asyncio.create_task(w.process.wait()): w for w in workers if w.process is not None
            }
            done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
            for task in exits:
                if task not in done:
                    task.cancel()
            if stop.is_set():
                return None
            for task in done - {stopping}:
                worker = exits[task]
                code = task.result()
                now = time.monotonic()
                worker.restarts = [t for t in worker.restarts if now - t < RESTART_WINDOW_S]
                ended = f"exited with code {code}" if code >= 0 else f"was killed (signal {-code})"
                if len(worker.restarts) >= RESTARTS:
                    return (
                        f"worker {worker.index} {ended}, the {RESTARTS + 1}th time in "
                        f"{RESTART_WINDOW_S / 60:.0f} minutes"
                    )
                delay_s = delays_s[min(len(worker.restarts), len(delays_s) - 1)]
                worker.restarts.append(now)
                logger.error("worker %d %s; restarting it in %g s", worker.index, ended, delay_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay_s)
                if stop.is_set():
                    return None
                await start(worker)
        return None
    finally:
        stopping.cancel()


async def _stop_all(workers: list[Worker], wait_s: float) -> int:
    """SIGTERM every worker, SIGKILL those still running after `wait_s`; 0 if all exited 0."""
    running = [w.process for w in workers if w.process is not None]
    for process in running:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    try:
        codes: list[int] = await asyncio.wait_for(
            asyncio.gather(*(p.wait() for p in running)), wait_s
        )
    except TimeoutError:
        for process in running:
            if process.returncode is None:
                logger.error("worker pid %d did not stop in %g s: killed", process.pid, wait_s)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await asyncio.gather(*(p.wait() for p in running))
        return 1
    return 0 if all(code == 0 for code in codes) else 1

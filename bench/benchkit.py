"""What the benchmark's scripts share: events, child processes, /proc figures, percentiles."""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import signal
import socket
import string
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

BENCH_DIR = Path(__file__).resolve().parent
MIN_EVENT_BYTES, MAX_EVENT_BYTES = 300, 1000
EVENT_VARIANTS = 512
START_TIMEOUT_S = 15.0
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 20
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A benchmark step failed or timed out; the message says which and why."""


# ---------------------------------------------------------------- events


class EventMaker:
    """Events of 300-1000 bytes of JSON with `id`, `verb`, `actor.id` and some content.

    Actors and contents come from a fixed set of variants drawn once from `seed`, so that making
    an event costs one JSON encoding and a load generator is never the limit.
    """

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        text = "".join(rng.choices(string.ascii_letters + " ", k=4 * MAX_EVENT_BYTES))
        self._variants: list[tuple[str, str]] = []
        for _ in range(EVENT_VARIANTS):
            actor = f"user-{rng.randrange(1000)}"
            size = rng.randint(MIN_EVENT_BYTES, MAX_EVENT_BYTES)
            start = rng.randrange(len(text) - MAX_EVENT_BYTES)
            self._variants.append((actor, text[start : start + size]))

    def make(self, event_id: str, index: int) -> tuple[bytes, bytes]:
        """The Kafka key (the actor id) and JSON body of one event."""
        actor, content = self._variants[index % EVENT_VARIANTS]
        overhead = 120 + len(event_id) + len(actor)  # the JSON around the content, roughly
        body = orjson.dumps(
            {
                "id": event_id,
                "verb": "detect",
                "actor": {"id": actor, "objectType": "user"},
                "object": {"objectType": "image", "content": content[overhead:]},
            }
        )
        return actor.encode(), body


def event_id(prefix: str, index: int) -> str:
    """The id of the index-th event of a load: `prefix-index`."""
    return f"{prefix}-{index}"


def split_event_id(ident: str) -> tuple[str, int] | None:
    """The (prefix, index) of an id made by `event_id`; None for any other id."""
    prefix, _, number = ident.rpartition("-")
    return (prefix, int(number)) if prefix and number.isdigit() else None


# ---------------------------------------------------------------- figures


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of the values (nearest rank); NaN-free: empty gives zeros."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}

    def rank(q: float) -> float:
        return ordered[max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5))) - 1]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (every thread's children), as far as /proc shows them."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(p) for p in children.read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process and its descendants have used so far."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS_PER_S


def rss_kb(pid: int) -> tuple[int, int]:
    """Resident memory now and at its peak (kB), summed over the process and its descendants."""
    now = peak = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                now += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak += int(line.split()[1])
    return now, peak


def command_name(pid: int) -> str:
    """The process's command name, empty when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """The machine a run is on: cores, CPU model, memory, load when it starts."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "load_average": os.getloadavg()}


# ---------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In a child before exec: have Linux SIGTERM it when the benchmark dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: children are still stopped on every normal exit


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (as `logistik run` uses), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def script(name: str) -> str:
    """The path of one of the benchmark's scripts."""
    return str(BENCH_DIR / name)


class Child:
    """A subprocess with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self._log_path = log_path
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        self.web_port: int | None = None  # logistik's web port, for its /metrics

    def start(self) -> Child:
        """Start it apart from the terminal's process group: a Ctrl-C stops it only via `stop`."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self._cwd,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        """Its process id; it must have been started."""
        assert self._process is not None, f"{self.name} was not started"
        return self._process.pid

    def check(self) -> None:
        """Raise BenchError if it has exited."""
        if self._process is not None and self._process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self._process.returncode}; its log:\n{self.tail()}"
            )

    def tail(self) -> str:
        """The last lines of its log, indented."""
        try:
            lines = self._log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        return "\n".join(f"    {line}" for line in lines[-LOG_TAIL_LINES:]) or "    (empty)"

    def stop(self) -> int | None:
        """Ask it to stop, kill it if it has not within the grace period; its exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode


async def wait_for_port(port: int, child: Child, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until something accepts connections on the port, failing if the child exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        child.check()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{child.name} did not listen on port {port} within {timeout_s:g} s; "
                    f"its log:\n{child.tail()}"
                ) from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return

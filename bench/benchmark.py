"""Measures logistik's throughput and added latency against a direct HTTP loop and a plain loop.

Every part is real and on 127.0.0.1: a fresh embedded Tansu broker per Kafka measurement, one
fast model server in its own process, and `logistik run` as a subprocess.

    python bench/benchmark.py [--events N] [--concurrency N] [--partitions N] [--rate R]
                              [--paced-seconds S] [--phases direct,plain,logistik] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Protocol

import aiohttp
import orjson
import yaml
from aiohttp import web
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from logistik.event import actor_key
from logistik.kafka import EmbeddedBroker, Headers, free_port, produce

SCRIPT = Path(__file__).resolve()
PHASES = ("direct", "plain", "logistik")
PHASE_TITLES = {"direct": "direct", "plain": "plain loop", "logistik": "logistik"}
MODES = ("burst", "paced")
TOPIC = "bench-events"
RESULTS = f"{TOPIC}-results"
FAILED = f"{TOPIC}-failed"
EVENT_ID_HEADER = "logistik.event_id"
JSON_HEADERS = {"Content-Type": "application/json"}
MIN_EVENT_BYTES, MAX_EVENT_BYTES = 300, 1000
MAX_BATCH = 500
START_TIMEOUT_S = 15.0
WARM_UP_TIMEOUT_S = 60.0
STALL_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 20


class BenchError(Exception):
    """A benchmark step failed or timed out; the message says which and why."""


@dataclass(frozen=True)
class Params:
    """What to measure, from the command line."""

    events: int
    concurrency: int
    partitions: int
    rate: float
    paced_seconds: float
    phases: tuple[str, ...]
    rounds: int = 1

    @property
    def paced_events(self) -> int:
        """How many events a paced measurement sends."""
        return max(1, round(self.rate * self.paced_seconds))


@dataclass(frozen=True, slots=True)
class Event:
    """One benchmark event: its id, Kafka key (the actor id) and JSON body."""

    event_id: str
    key: bytes
    body: bytes


@dataclass
class Result:
    """One measurement: how many events, how long, each event's latency, CPU per process."""

    phase: str
    mode: str
    events: int
    seconds: float
    latencies_ms: list[float]
    cpu_s: dict[str, float] = field(default_factory=dict)
    round: int = 1

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile latency in ms (nearest rank)."""
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1]


class Router(Protocol):
    """A running router under measurement: the plain loop or a logistik process."""

    name: str

    @property
    def pid(self) -> int | None:
        """Its process id when it runs in a process of its own."""
        ...

    def check(self) -> None:
        """Raise BenchError if it stopped."""
        ...

    def tail(self) -> str:
        """The end of its log, for error messages."""
        ...


# ---------------------------------------------------------------- events and model server


def make_events(count: int, prefix: str, seed: int) -> list[Event]:
    """Events of 300-1000 bytes of JSON with `id`, `verb`, `actor.id` and some content."""
    rng = random.Random(seed)
    text = "".join(rng.choices(string.ascii_letters + " ", k=4 * MAX_EVENT_BYTES))
    events = []
    for i in range(count):
        event_id = f"{prefix}-{i:06d}"
        actor = f"user-{rng.randrange(1000)}"
        event: dict[str, Any] = {
            "id": event_id,
            "verb": "detect",
            "actor": {"id": actor, "objectType": "user"},
            "object": {"objectType": "image", "content": ""},
        }
        filler = rng.randint(MIN_EVENT_BYTES, MAX_EVENT_BYTES) - len(orjson.dumps(event))
        start = rng.randrange(len(text) - MAX_EVENT_BYTES)
        event["object"]["content"] = text[start : start + max(0, filler)]
        events.append(Event(event_id, actor.encode(), orjson.dumps(event)))
    return events


async def predict(request: web.Request) -> web.Response:
    """Answer one event at once with its id and a label."""
    event = orjson.loads(await request.read())
    body = orjson.dumps({"id": event.get("id"), "label": "cat", "score": 0.93})
    return web.Response(body=body, content_type="application/json")


def serve_model(port: int) -> None:
    """Serve the benchmark model on POST /predict until SIGINT or SIGTERM."""
    app = web.Application()
    app.router.add_post("/predict", predict)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---------------------------------------------------------------- processes


class Child:
    """A subprocess with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self._argv = argv
        self._log_path = log_path
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        """Start it apart from the terminal's process group: a Ctrl-C stops it only via `stop`."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self._cwd,
                env=env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        """Its process id once started."""
        return self._process.pid if self._process is not None else None

    def check(self) -> None:
        """Raise BenchError if it has exited."""
        if self._process is not None and self._process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self._process.returncode}; its log:\n{self.tail()}"
            )

    def logged(self) -> bool:
        """Whether it wrote anything to its log."""
        try:
            return self._log_path.stat().st_size > 0
        except OSError:
            return False

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
            process.terminate()
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


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; 0 when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pids() -> list[int]:
    """Process ids of the Tansu brokers this process started."""
    pids = []
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids += [int(p) for p in children.read_text().split()]
        except OSError:
            continue
    return [p for p in pids if "tansu" in _command_name(p)]


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_snapshot(model: Child, router: Router | None) -> dict[str, float]:
    """CPU seconds so far of the benchmark, the model server, the broker and the router."""
    snapshot = {"bench": cpu_seconds(os.getpid())}
    if model.pid is not None:
        snapshot["model"] = cpu_seconds(model.pid)
    snapshot["broker"] = sum(cpu_seconds(pid) for pid in broker_pids())
    if router is not None and router.pid is not None:
        snapshot["router"] = cpu_seconds(router.pid)
    return snapshot


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process used between two snapshots."""
    return {name: after[name] - before.get(name, 0.0) for name in after}


# ---------------------------------------------------------------- phase a: direct HTTP


@asynccontextmanager
async def http_client(concurrency: int) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp client with at most `concurrency` connections."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        yield client


async def call_model(http: aiohttp.ClientSession, url: str, body: bytes) -> bytes:
    """POST one event to the model and return its answer; anything but 200 is a BenchError."""
    try:
        async with http.post(url, data=body, headers=JSON_HEADERS) as response:
            answer = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BenchError(f"the model at {url} did not answer: {exc!r}") from None
    if response.status != 200:
        raise BenchError(f"the model at {url} answered HTTP {response.status}: {answer[:200]!r}")
    return answer


async def direct_burst(url: str, events: list[Event], concurrency: int) -> Result:
    """Post every event with `concurrency` requests in flight; time each request."""
    latencies: list[float] = []
    bodies = iter([e.body for e in events])

    async def worker(http: aiohttp.ClientSession) -> None:
        for body in bodies:
            started = time.perf_counter()
            await call_model(http, url, body)
            latencies.append((time.perf_counter() - started) * 1000)

    async with http_client(concurrency) as http:
        await asyncio.gather(*(call_model(http, url, e.body) for e in events[:concurrency]))
        started = time.perf_counter()
        await _bounded(
            asyncio.gather(*(worker(http) for _ in range(concurrency))),
            f"direct: the model answered {{done}} of {len(events)} requests within {{s}} s",
            lambda: len(latencies),
            answer_budget_s(len(events)),
        )
        seconds = time.perf_counter() - started
    return Result("direct", "burst", len(events), seconds, latencies)


async def direct_paced(url: str, events: list[Event], rate: float, concurrency: int) -> Result:
    """Post events at `rate` per second (at most `concurrency` in flight); time each request."""
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)

    async def one(http: aiohttp.ClientSession, body: bytes) -> None:
        started = time.perf_counter()
        async with slots:
            await call_model(http, url, body)
        latencies.append((time.perf_counter() - started) * 1000)

    async def pace(http: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i, event in enumerate(events):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, event.body)))
        await asyncio.gather(*tasks)

    async with http_client(concurrency) as http:
        await asyncio.gather(*(call_model(http, url, e.body) for e in events[:concurrency]))
        started = time.perf_counter()
        await _bounded(
            pace(http),
            f"direct: the model answered {{done}} of {len(events)} paced requests within {{s}} s",
            lambda: len(latencies),
            len(events) / rate + answer_budget_s(len(events)),
        )
        seconds = time.perf_counter() - started
    return Result("direct", "paced", len(events), seconds, latencies)


async def _bounded(
    work: Awaitable[object], message: str, done: Callable[[], int], timeout_s: float
) -> None:
    """Await work within timeout_s; on timeout raise BenchError(message with {done} and {s})."""
    try:
        async with asyncio.timeout(timeout_s):
            await work
    except TimeoutError:
        raise BenchError(message.format(done=done(), s=f"{timeout_s:g}")) from None


def answer_budget_s(count: int) -> float:
    """The longest a measurement of `count` events may take before it is called stuck."""
    return max(60.0, count / 100)


# ---------------------------------------------------------------- Kafka helpers


def client_config(servers: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Settings of the benchmark's own Kafka clients: this broker, librdkafka warnings only."""
    return {"bootstrap.servers": servers, "log_level": 4, **(extra or {})}


def create_topics(servers: str, partitions: int) -> None:
    """Create the events, results and failed topics, so every router sees the same topology."""
    admin = AdminClient(client_config(servers))
    topics = [
        NewTopic(t, num_partitions=partitions, replication_factor=1)
        for t in (TOPIC, RESULTS, FAILED)
    ]
    for topic, future in admin.create_topics(topics, operation_timeout=10).items():
        try:
            future.result(START_TIMEOUT_S)
        except Exception as exc:
            raise BenchError(f"cannot create topic {topic}: {exc}") from None


def produce_events(
    servers: str, events: Sequence[Event], rate: float | None, stop: threading.Event
) -> dict[str, float]:
    """Produce events as fast as possible or at `rate` per second; returns each one's send time."""
    producer = Producer(client_config(servers, {"linger.ms": 1, "acks": "all"}))
    sent: dict[str, float] = {}
    start = time.time()
    for i, event in enumerate(events):
        if stop.is_set():
            break
        if rate is not None:
            time.sleep(max(0.0, start + i / rate - time.time()))
        sent[event.event_id] = time.time()
        produce(producer, TOPIC, event.body, event.key, full_wait_s=0.01)
    if stop.is_set():
        producer.purge()  # cancelled: drop what is queued instead of waiting for it
    left = int(producer.flush(0 if stop.is_set() else 30))
    if left and not stop.is_set():
        raise BenchError(f"{left} event(s) not acknowledged by the broker within 30 s")
    return sent


async def send_events(
    servers: str, events: Sequence[Event], rate: float | None
) -> dict[str, float]:
    """Produce events on a thread, so routers on this event loop keep running meanwhile."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(produce_events, servers, events, rate, stop)
    finally:
        stop.set()


class AnswerReader:
    """Reads the results and failed topics on a thread; keeps each event's first answer time."""

    def __init__(self, servers: str, partitions: int) -> None:
        self._consumer = Consumer(
            {
                **client_config(servers),
                "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign(
            [
                TopicPartition(t, p, OFFSET_BEGINNING)
                for t in (RESULTS, FAILED)
                for p in range(partitions)
            ]
        )
        self._answers: dict[str, float] = {}
        self._expected: frozenset[str] = frozenset()
        self._hits = 0
        self.duplicates = 0
        self.failed = 0
        self.last_failure = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="answer-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            received = time.time()
            for message in [first, *self._consumer.consume(MAX_BATCH - 1, 0)]:
                if message.error() is None:
                    self._record(message, received)
        self._consumer.close()

    def _record(self, message: Message, received: float) -> None:
        headers = dict(message.headers() or [])
        if message.topic() == FAILED:
            self.last_failure = " ".join(
                _text(headers.get(f"logistik.{name}")) for name in ("reason", "error")
            )
            self.failed += 1
            return
        raw_id = headers.get(EVENT_ID_HEADER)
        if isinstance(raw_id, bytes):
            event_id = raw_id.decode()
        else:
            event_id = raw_id or str(orjson.loads(message.value() or b"{}").get("id"))
        kind, stamp_ms = message.timestamp()
        at = received if kind == TIMESTAMP_NOT_AVAILABLE else stamp_ms / 1000
        with self._lock:
            if event_id in self._answers:
                self.duplicates += 1
                return
            self._answers[event_id] = at
            if event_id in self._expected:
                self._hits += 1

    def expect(self, ids: Collection[str]) -> None:
        """Count answers to these events from now on (and those already read)."""
        with self._lock:
            self._expected = frozenset(ids)
            self._hits = sum(1 for i in self._expected if i in self._answers)

    def answered(self) -> int:
        """How many of the expected events have an answer."""
        return self._hits

    def times(self, ids: Collection[str]) -> dict[str, float]:
        """When each of these events' answer was written (its Kafka timestamp), in epoch seconds."""
        with self._lock:
            return {i: self._answers[i] for i in ids}

    def close(self) -> None:
        """Stop reading and leave."""
        self._stop.set()
        self._thread.join(STOP_GRACE_S)


def _text(value: str | bytes | None) -> str:
    """A header value as text."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


# ---------------------------------------------------------------- phase b: the plain loop


class PlainLoop:
    """The reference: a hand-written consume → call → produce → commit loop in this process."""

    name = "the plain loop"

    def __init__(self, servers: str, url: str, concurrency: int) -> None:
        self._url = url
        self._concurrency = concurrency
        self._consumer = Consumer(
            {
                **client_config(servers),
                "group.id": f"bench-plain-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
                "session.timeout.ms": 6000,
            }
        )
        # The same delivery settings as logistik's producer, so both pay for the same acks.
        self._producer = Producer(
            {
                **client_config(servers),
                "linger.ms": 2,
                "acks": "all",
                "enable.idempotence": True,
            }
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plain-consumer")
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """None: it runs inside the benchmark process."""
        return None

    def check(self) -> None:
        """Raise BenchError if the loop stopped with an error."""
        task = self._task
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            raise BenchError(
                f"the plain loop stopped: {error!r}" if error else "the plain loop ended"
            )

    def tail(self) -> str:
        """No log: it runs in this process."""
        return "    (in-process, no log)"

    async def run(self, stop: asyncio.Event) -> None:
        """Route batches until `stop` is set, then close the consumer."""
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._consumer.subscribe, [TOPIC])
        try:
            async with http_client(self._concurrency) as http:
                while not stop.is_set():
                    batch = await loop.run_in_executor(self._thread, self._poll)
                    if batch:
                        await self._route_batch(http, batch)
        finally:
            await loop.run_in_executor(self._thread, self._consumer.close)
            self._thread.shutdown()
            self._producer.purge()  # answers of an unfinished batch: never committed, so dropped
            self._producer.close()

    def _poll(self) -> list[Message]:
        first = self._consumer.poll(0.1)
        if first is None:
            return []
        batch = [first, *self._consumer.consume(MAX_BATCH - 1, 0)]
        for message in batch:
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                raise BenchError(f"the plain loop's consumer: {error.str()}")
        return [m for m in batch if m.error() is None]

    async def _route_batch(self, http: aiohttp.ClientSession, batch: list[Message]) -> None:
        """Call the model for each event, publish each answer, wait for acks, commit once."""
        messages = iter(batch)

        async def worker() -> None:
            for message in messages:
                await self._route(http, message)

        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(batch)))))
        left = await asyncio.to_thread(self._producer.flush, CALL_TIMEOUT_S)
        if left:
            raise BenchError(f"the plain loop: {left} answer(s) not acknowledged")
        await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: self._consumer.commit(asynchronous=True)
        )

    async def _route(self, http: aiohttp.ClientSession, message: Message) -> None:
        value = message.value() or b""
        event = orjson.loads(value)
        answer = await call_model(http, self._url, value)
        headers: Headers = [(EVENT_ID_HEADER, str(event["id"]).encode())]
        produce(self._producer, RESULTS, answer, actor_key(event), headers, full_wait_s=0.01)


@asynccontextmanager
async def plain_router(servers: str, ctx: Context) -> AsyncIterator[Router]:
    """Run the plain loop on this event loop while the block runs."""
    stop = asyncio.Event()
    plain = PlainLoop(servers, ctx.model_url, ctx.params.concurrency)
    task = asyncio.create_task(plain.run(stop))
    try:
        yield plain
    finally:
        stop.set()
        with suppress(Exception):  # its error, if any, was reported while waiting for answers
            await asyncio.wait_for(task, STOP_GRACE_S)


# ---------------------------------------------------------------- phase c: logistik


def logistik_config(servers: str, params: Params, model_port: int) -> dict[str, Any]:
    """A config for `logistik run`: this broker, a fresh group, one handler on the model."""
    handler = {
        "name": "bench-model",
        "event": TOPIC,
        "endpoint": "127.0.0.1",
        "port": model_port,
        "path": "/predict",
        "return_to": RESULTS,
    }
    return {
        "kafka": {
            "bootstrap_servers": servers,
            "group_id": f"bench-logistik-{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 6000,
            "partitions": params.partitions,
        },
        "discovery": {"handlers": [handler]},
        "routing": {"max_concurrency_per_handler": params.concurrency, "shutdown_grace_s": 5},
        "log_level": "warning",
    }


def start_logistik(servers: str, ctx: Context, label: str) -> Child:
    """Write a config file and start `python -m logistik run` on it."""
    path = ctx.tmp / f"logistik-{label}.yaml"
    path.write_text(yaml.safe_dump(logistik_config(servers, ctx.params, ctx.model_port)))
    argv = [sys.executable, "-m", "logistik", "run", "--config", str(path)]
    return Child("logistik", argv, path.with_suffix(".log"), ctx.tmp).start()


@asynccontextmanager
async def logistik_router(servers: str, ctx: Context, label: str) -> AsyncIterator[Router]:
    """Run `logistik run` as a subprocess while the block runs."""
    child = start_logistik(servers, ctx, label)
    try:
        yield child
    except BaseException:
        await asyncio.to_thread(child.stop)
        raise
    else:
        code = await asyncio.to_thread(child.stop)
        if code != 0:
            progress(f"warning: logistik exited with code {code}; its log:\n{child.tail()}")
        elif child.logged():
            progress(f"note: logistik logged warnings:\n{child.tail()}")


# ---------------------------------------------------------------- measuring through Kafka


@dataclass(frozen=True)
class Context:
    """What every measurement shares: parameters, scratch directory, model server, events."""

    params: Params
    tmp: Path
    model: Child
    model_port: int
    burst: list[Event]
    paced: list[Event]
    warm_up: list[Event]

    @property
    def model_url(self) -> str:
        """Where the model answers."""
        return f"http://127.0.0.1:{self.model_port}/predict"


async def wait_answers(
    reader: AnswerReader, router: Router, ids: Collection[str], what: str, timeout_s: float
) -> None:
    """Wait until every event has an answer; fail on a stall, a timeout or a dead router."""
    reader.expect(ids)
    started = last_progress = time.monotonic()
    last = -1
    while (count := reader.answered()) < len(ids):
        router.check()
        if reader.failed:
            raise BenchError(
                f"{router.name} sent {reader.failed} event(s) to {FAILED} (last: "
                f"{reader.last_failure}); its log:\n{router.tail()}"
            )
        now = time.monotonic()
        if count != last:
            last, last_progress = count, now
        if now - started > timeout_s or now - last_progress > STALL_TIMEOUT_S:
            stalled = f" (none for the last {now - last_progress:.0f} s)" if count else ""
            raise BenchError(
                f"{router.name} produced {count} of {len(ids)} {what} answers within "
                f"{now - started:.0f} s{stalled}; its log:\n{router.tail()}"
            )
        await asyncio.sleep(0.05)


@asynccontextmanager
async def start_router(phase: str, servers: str, ctx: Context, label: str) -> AsyncIterator[Router]:
    """The router of a Kafka phase, running while the block runs."""
    factory = (
        plain_router(servers, ctx) if phase == "plain" else logistik_router(servers, ctx, label)
    )
    async with factory as router:
        yield router


async def measure_kafka(phase: str, mode: str, ctx: Context) -> Result:
    """One Kafka measurement on a fresh broker: start, warm up, produce, wait for every answer."""
    events = ctx.burst if mode == "burst" else ctx.paced
    rate = None if mode == "burst" else ctx.params.rate
    label = f"{phase}-{mode}"
    async with AsyncExitStack() as stack:
        broker = EmbeddedBroker(log_path=ctx.tmp / f"tansu-{label}.log")
        # Started on this (the main) thread: the broker ends when the thread that started it does.
        stack.enter_context(broker)
        servers = broker.bootstrap_servers
        await asyncio.to_thread(create_topics, servers, ctx.params.partitions)
        reader = AnswerReader(servers, ctx.params.partitions)
        stack.callback(reader.close)
        router = await stack.enter_async_context(start_router(phase, servers, ctx, label))
        await send_events(servers, ctx.warm_up, None)
        warm_ids = [e.event_id for e in ctx.warm_up]
        await wait_answers(reader, router, warm_ids, "warm-up", WARM_UP_TIMEOUT_S)
        before = cpu_snapshot(ctx.model, router)
        sent = await send_events(servers, events, rate)
        budget = (len(events) / rate if rate else 0.0) + answer_budget_s(len(events))
        await wait_answers(reader, router, sent.keys(), mode, budget)
        cpu = cpu_used(before, cpu_snapshot(ctx.model, router))
        answered = reader.times(sent.keys())
        if reader.duplicates:
            progress(f"  note: {reader.duplicates} event(s) answered more than once")
    return kafka_result(phase, mode, sent, answered, cpu)


def kafka_result(
    phase: str, mode: str, sent: dict[str, float], answered: dict[str, float], cpu: dict[str, float]
) -> Result:
    """Throughput from the first send to the last answer; latency per event, matched by id."""
    start = min(sent.values())
    end = max(answered.values())
    latencies = [(answered[i] - at) * 1000 for i, at in sent.items()]
    return Result(phase, mode, len(sent), end - start, latencies, cpu)


async def measure_direct(mode: str, ctx: Context) -> Result:
    """One direct-HTTP measurement, with the CPU each process used."""
    before = cpu_snapshot(ctx.model, None)
    if mode == "burst":
        result = await direct_burst(ctx.model_url, ctx.burst, ctx.params.concurrency)
    else:
        result = await direct_paced(
            ctx.model_url, ctx.paced, ctx.params.rate, ctx.params.concurrency
        )
    result.cpu_s = cpu_used(before, cpu_snapshot(ctx.model, None))
    return result


async def start_model(stack: AsyncExitStack, tmp: Path) -> tuple[Child, int]:
    """Start the model server in its own process; it is stopped when the stack closes."""
    port = free_port()
    argv = [sys.executable, str(SCRIPT), "--serve-model", str(port)]
    model = Child("the model server", argv, tmp / "model.log", tmp).start()
    stack.callback(model.stop)
    await wait_for_port(port, model)
    return model, port


async def run(params: Params) -> list[Result]:
    """Every chosen phase, burst then paced, against one model server."""
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="logistik-bench-") as tmp:
        async with AsyncExitStack() as stack:
            model, port = await start_model(stack, Path(tmp))
            ctx = Context(
                params,
                Path(tmp),
                model,
                port,
                make_events(params.events, "event", 1),
                make_events(params.paced_events, "paced", 2),
                make_events(params.concurrency, "warm-up", 3),
            )
            # Bursts are repeated in turn (direct, plain, logistik, direct, ...) so that a slow
            # spell of the machine falls on every phase alike; the ratios use the medians.
            for mode in MODES:
                for round_ in range(1, (params.rounds if mode == "burst" else 1) + 1):
                    for phase in params.phases:
                        progress(f"{PHASE_TITLES[phase]}, {mode}, round {round_} ...")
                        if phase == "direct":
                            result = await measure_direct(mode, ctx)
                        else:
                            result = await measure_kafka(phase, mode, ctx)
                        result.round = round_
                        results.append(result)
                        progress(
                            f"  {result.rate:,.0f} events/s, p50 {result.percentile(50):.1f} ms"
                        )
    return results


def progress(message: str) -> None:
    """A progress line on stderr, keeping stdout for the results."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- output


def table(results: list[Result]) -> list[str]:
    """One row per measurement."""
    header = (
        f"{'phase':<11}{'mode':<7}{'round':>5}{'events':>8}{'seconds':>9}{'events/s':>10}"
        f"{'p50 ms':>9}{'p99 ms':>9}   CPU s: {'bench':>6}{'model':>7}{'broker':>8}{'router':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        cpu = "".join(
            f"{r.cpu_s[name]:>{width}.1f}" if name in r.cpu_s else f"{'-':>{width}}"
            for name, width in (("bench", 6), ("model", 7), ("broker", 8), ("router", 8))
        )
        lines.append(
            f"{PHASE_TITLES[r.phase]:<11}{r.mode:<7}{r.round:>5}{r.events:>8}{r.seconds:>9.2f}"
            f"{r.rate:>10,.0f}{r.percentile(50):>9.1f}{r.percentile(99):>9.1f}          {cpu}"
        )
    return lines


def ratios(results: list[Result]) -> list[str]:
    """logistik's throughput against the others, and the latency it adds over a direct call."""
    found = {(r.phase, r.mode): r for r in results}
    bursts = {
        phase: [r for r in results if r.phase == phase and r.mode == "burst"] for phase in PHASES
    }
    logistik = bursts["logistik"]
    lines = []
    for phase, what in (("direct", "direct req/s"), ("plain", "plain-loop events/s")):
        other = bursts[phase]
        if logistik and other:
            lines.append(
                f"  logistik events/s / {what:<20} {_ratio(logistik, other, lambda r: r.rate)}"
            )
    plain = bursts["plain"]
    if logistik and plain and all("router" in r.cpu_s for r in logistik):
        # The plain loop shares the bench process with the load generator and answer reader,
        # whose own cost is the bench CPU of a logistik run (the same work, nothing else).
        bench_us = median(r.cpu_s["bench"] / r.events * 1e6 for r in logistik)
        plain_us = median(r.cpu_s["bench"] / r.events * 1e6 for r in plain) - bench_us
        logistik_us = median(r.cpu_s["router"] / r.events * 1e6 for r in logistik)
        lines.append(
            f"  router CPU per event (burst{_median_note(logistik)}): logistik "
            f"{logistik_us:.0f} µs, plain loop ~{plain_us:.0f} µs"
        )
    direct = found.get(("direct", "paced"))
    for phase in ("logistik", "plain"):
        paced = found.get((phase, "paced"))
        if paced is not None and direct is not None:
            p50, p99 = (paced.percentile(q) - direct.percentile(q) for q in (50, 99))
            lines.append(
                f"  latency {PHASE_TITLES[phase]} adds over a direct call (paced): "
                f"p50 {p50:+.1f} ms, p99 {p99:+.1f} ms"
            )
    return lines


def _ratio(ours: list[Result], theirs: list[Result], figure: Callable[[Result], float]) -> str:
    """The median of per-round ratios, with their range when there are several rounds."""
    by_round = {r.round: figure(r) for r in theirs}
    values = sorted(figure(r) / by_round[r.round] for r in ours if by_round.get(r.round))
    if not values:
        return "n/a"
    text = f"{median(values):6.2f}"
    if len(values) > 1:
        text += f"  (median of {len(values)} rounds, {values[0]:.2f}-{values[-1]:.2f})"
    return text


def _median_note(results: list[Result]) -> str:
    return f", median of {len(results)} rounds" if len(results) > 1 else ""


def report(params: Params, results: list[Result]) -> str:
    """The printed summary: machine, parameters, table, ratios."""
    lines = [
        "logistik benchmark",
        f"  machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}",
        f"  parameters: events={params.events} ({MIN_EVENT_BYTES}-{MAX_EVENT_BYTES} B JSON), "
        f"concurrency={params.concurrency}, partitions={params.partitions}, "
        f"paced: {params.rate:g} events/s for {params.paced_seconds:g} s "
        f"({params.paced_events} events), phases={','.join(params.phases)}, "
        f"rounds={params.rounds}",
        "  burst: every event sent at once; paced: sent at the given rate. Latency: answer's",
        "  Kafka timestamp (direct: response) minus send time. CPU: seconds each process used",
        "  while measuring; bench = load generator and answer reader, plus the plain loop itself.",
        "",
        *table(results),
    ]
    extra = ratios(results)
    if extra:
        lines += ["", "ratios:", *extra]
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="events per burst")
    parser.add_argument("--concurrency", type=int, default=64, help="model calls in flight")
    parser.add_argument("--partitions", type=int, default=3, help="partitions per topic")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s when paced")
    parser.add_argument("--paced-seconds", type=float, default=5.0, help="length of paced runs")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="burst measurements per phase, taken in turn"
    )
    parser.add_argument("--serve-model", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def params_from(args: argparse.Namespace) -> Params:
    """Validated parameters; a bad value exits with a one-line message."""
    phases = tuple(p.strip() for p in str(args.phases).split(",") if p.strip())
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        sys.exit(f"--phases: unknown {', '.join(unknown) or '(none)'}; choose from {PHASES}")
    for name in ("events", "concurrency", "partitions", "rate", "paced_seconds", "rounds"):
        if getattr(args, name) <= 0:
            sys.exit(f"--{name.replace('_', '-')} must be positive")
    ordered = tuple(p for p in PHASES if p in phases)
    return Params(
        args.events,
        args.concurrency,
        args.partitions,
        args.rate,
        args.paced_seconds,
        ordered,
        args.rounds,
    )


def main() -> None:
    """Serve the model (internal) or run the benchmark and print its report."""
    args = parse_args()
    if args.serve_model is not None:
        serve_model(args.serve_model)
        return
    params = params_from(args)
    try:
        results = asyncio.run(run(params))
    except BenchError as exc:
        sys.exit(f"benchmark failed: {exc}")
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("benchmark interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)
    print(report(params, results))


if __name__ == "__main__":
    main()

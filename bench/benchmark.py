"""Measures logistik against the loops a user would write and against the model's own limit.

Every part is a process of its own on 127.0.0.1: the model server (bench/model_server.py, a
raw HTTP server on uvloop), a fresh embedded Tansu broker per Kafka measurement, the router
under measurement, the load generator (bench/load.py) and the answer reader (bench/reader.py).
The routers are `logistik run --config FILE` with its shipped defaults, and two plain loops as
most people would write them (bench/plain_aiokafka.py, bench/plain_confluent.py). The direct
load calls the model without Kafka at the same concurrency, with a Python client and with wrk:
that is the limit. Kafka alone (`kafka-only`) is the confluent-kafka loop calling no model: what
the broker and a Python Kafka client allow before any call.

    python bench/benchmark.py [--events N] [--rounds N] [--phases burst,paced,...]
                              [--report PATH] [--soak-events N]
    python bench/benchmark.py --markdown REPORT.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import orjson
import yaml
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from benchkit import (
    BENCH_DIR,
    BenchError,
    Child,
    EventMaker,
    command_name,
    cpu_seconds,
    die_with_parent,
    event_id,
    free_port,
    machine,
    percentiles,
    process_tree,
    rss_kb,
    script,
    wait_for_port,
)
from http_clients import CLIENTS, installed
from logistik.kafka.embedded import EmbeddedBroker
from logistik.protocol import failed_topic

if TYPE_CHECKING:
    from tests.support.apache_kafka import ApacheKafka

PHASES = ("burst", "paced", "groups", "slow", "batch", "soak")
ROUTERS = (
    "direct-wrk",
    "direct",
    "plain-aiokafka",
    "plain-confluent",
    "kafka-only",
    "logistik",
    "logistik-workers",
)
LOGISTIK = ("logistik", "logistik-workers")
PLAIN = ("plain-aiokafka", "plain-confluent")
TITLES = {
    "direct-wrk": "direct load, wrk",
    "direct": "direct load, {client}",
    "plain-aiokafka": "plain loop, aiokafka + aiohttp",
    "plain-confluent": "plain loop, confluent-kafka + aiohttp",
    "kafka-only": "Kafka alone: the confluent-kafka loop, no model call",
    "logistik": "logistik run",
    "logistik-workers": "logistik run --workers {workers}",
}
BROKER_TITLES = {"tansu": "embedded Tansu", "kafka": "Apache Kafka"}
FASTEST_CLIENTS = ("httptools", "pycurl", "pyreqwest-unbounded", "aiohttp-unbounded")
TOPIC = "bench-events"
RESULTS = "bench-results"
FAILED = failed_topic(TOPIC)
WARM_UP, MEASURED = "warm", "m"
PACED_WARM_UP = "settle"
WARM_UP_TIMEOUT_S = 60.0
# A fresh JVM answers slowly for its first 10-20 s, until it has compiled its hot paths (10,000
# events at once were not enough): 30,000 events over 15 s through a topic no router reads.
KAFKA_WARM_UP_EVENTS, KAFKA_WARM_UP_RATE = 30_000, 2_000.0
BROKER_WARM_TOPIC, BROKER_WARM_UP = "bench-broker-warm-up", "jvm"
# After that warm-up the broker's compiler threads still took 0.3-0.5 of the two cores in the
# measured burst, compiling what only a router's own traffic reaches (its answers, compressed or
# not, its commits, its retry topics): a broker serving for hours has compiled them. So the
# bursts on Apache Kafka are first preceded by the same warm-up load and the same burst through
# the same router, unmeasured (see warm_up_router).
ROUTER_WARM_UP, ROUTER_BURST_WARM_UP = "jit", "jitburst"
ROUTER_WARM_UP_PHASES = ("burst", "groups", "slow")
STALL_TIMEOUT_S = 30.0
POLL_S = 0.05
RSS_SAMPLE_S = 1.0


@dataclass(frozen=True)
class Params:
    """What to measure, from the command line."""

    events: int = 20_000
    concurrency: int = 64
    partitions: int = 4
    rounds: int = 1
    phases: tuple[str, ...] = PHASES
    routers: tuple[str, ...] = ROUTERS
    client: str = "aiohttp-unbounded"
    wrk_seconds: float = 5.0
    paced_rate: float | None = None
    paced_seconds: float = 10.0
    paced_warm_up_s: float = 10.0
    groups: tuple[int, ...] = (3, 10)
    slow_delay_s: float = 2.0
    slow_seconds: float = 30.0
    soak_events: int = 50_000
    soak_rate: float | None = None
    batch_size: int = 32
    batch_cost_ms: float = 2.0
    batch_paced_rate: float = 50.0
    logistik_settings: tuple[str, ...] = ()
    workers: int = 2  # of the logistik-workers router
    broker: str = "tansu"  # which broker each Kafka measurement starts fresh


@dataclass(frozen=True)
class Group:
    """One consumer group of the router: a handler, its model, the topic its answers go to."""

    name: str
    port: int
    results: str
    fields: tuple[tuple[str, Any], ...] = ()  # more handler fields, e.g. batch_max_size


@dataclass
class Measurement:
    """One measurement: events answered, how long, latency, CPU and memory per process."""

    phase: str
    router: str
    round: int
    events: int
    seconds: float
    latency_ms: dict[str, float]
    cpu_s: dict[str, float]
    groups: int = 1
    batch: int = 1  # events per model request (the batch phase)
    rss_mb: dict[str, float] = field(default_factory=dict)  # the router's: start, middle, end
    rss_peak_mb: dict[str, float] = field(default_factory=dict)  # every process's peak
    complete: bool = True
    note: str = ""
    # Paced Kafka loads: from send to the reader reading the event itself, a floor of latency.
    hop_ms: dict[str, float] = field(default_factory=dict)
    # Paced: from the reader reading an event to it reading the answer, event by event: the
    # router's own part (fetch, call, produce) and the answer's hop.
    after_hop_ms: dict[str, float] = field(default_factory=dict)
    # logistik: (event, group) pairs it passed to a retry topic while measuring.
    retried: int | None = None
    # Answers per second over the second half of the answers (the first awaited topic's):
    # the pace once a burst's start (a model found slow, say) is behind.
    steady_events_per_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The measurement with its derived figures, for the report."""
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        return {
            **asdict(self),
            "events_per_s": rate,
            "calls_per_s": rate * self.groups,
            "cpu_us_per_event": {
                role: seconds / self.events * 1e6 if self.events else 0.0
                for role, seconds in self.cpu_s.items()
            },
        }


@dataclass
class Context:
    """What the measurements share: parameters, scratch directory, model servers."""

    params: Params
    tmp: Path
    stack: AsyncExitStack
    model: Child
    model_port: int
    slow_model: tuple[Child, int] | None = None
    batch_model: tuple[Child, int] | None = None
    runs: int = 0  # Kafka measurements so far, numbering their scratch directories

    @property
    def model_url(self) -> str:
        """Where the fast model answers."""
        return f"http://127.0.0.1:{self.model_port}/predict"


def progress(message: str) -> None:
    """A progress line on stderr, keeping stdout for the results."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


async def start_model(
    ctx_tmp: Path, stack: AsyncExitStack, delay_s: float = 0.0, cost_ms: float = 0.0
) -> tuple[Child, int]:
    """Start a model server in its own process; it is stopped when the stack closes."""
    port = free_port()
    argv = [sys.executable, script("model_server.py"), "--port", str(port)]
    name = "the model server"
    if delay_s:
        argv += ["--delay-s", str(delay_s)]
        name = "the slow model server"
    if cost_ms:
        argv += ["--request-cost-ms", str(cost_ms)]
        name = "the per-request-cost model server"
    log = ctx_tmp / f"model-{port}.log"
    model = Child(name, argv, log, ctx_tmp).start()
    stack.callback(model.stop)
    await wait_for_port(port, model)
    return model, port


async def slow_model(ctx: Context) -> tuple[Child, int]:
    """The slow model server, started the first time it is needed."""
    if ctx.slow_model is None:
        ctx.slow_model = await start_model(ctx.tmp, ctx.stack, ctx.params.slow_delay_s)
    return ctx.slow_model


async def run_json(argv: list[str], what: str, timeout_s: float) -> dict[str, Any]:
    """Run a process to its end and return the JSON line it printed last; killed if cancelled."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        raise BenchError(f"{what} did not finish within {timeout_s:g} s") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise BenchError(f"{what} failed:\n{err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return result


def run_with_rusage(argv: list[str], timeout_s: float) -> tuple[str, float]:
    """Run a process to its end; its output and the CPU seconds it used (from wait4)."""
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
    )
    killer = threading.Timer(timeout_s, process.kill)
    killer.start()
    try:
        assert process.stdout is not None
        output = process.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        killer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise BenchError(f"{argv[0]} exited with code {process.returncode}:\n{output[-2000:]}")
    return output, usage.ru_utime + usage.ru_stime


def tansu_pid() -> int | None:
    """The Tansu broker this process started (one runs at a time)."""
    for pid in process_tree(os.getpid()):
        if "tansu" in command_name(pid):
            return pid
    return None


def fresh_broker(kind: str, run_dir: Path) -> EmbeddedBroker | ApacheKafka:
    """A broker for one measurement: embedded Tansu, or Apache Kafka run as its script runs it."""
    if kind != "kafka":
        return EmbeddedBroker(log_path=run_dir / "tansu.log")
    # The test suite's runner of Apache Kafka, from the repository this script is in.
    if str(BENCH_DIR.parent) not in sys.path:
        sys.path.append(str(BENCH_DIR.parent))
    from tests.support.apache_kafka import SERVER_JVM_OPTIONS, ApacheKafka

    return ApacheKafka(log_path=run_dir / "kafka.log", jvm_options=SERVER_JVM_OPTIONS)


def create_topics(servers: str, topics: Sequence[str], partitions: int) -> None:
    """Create the topics, so that every router sees the same layout."""
    admin = AdminClient({"bootstrap.servers": servers, "log_level": 4})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics],
        operation_timeout=10,
    )
    for topic, future in futures.items():
        try:
            future.result(15)
        except Exception as exc:
            raise BenchError(f"cannot create topic {topic}: {exc}") from None


class AnswerReader:
    """bench/reader.py in its own process; its progress lines are followed as they come."""

    def __init__(self, process: asyncio.subprocess.Process, out: Path, log: Path) -> None:
        self._process = process
        self._out = out
        self._log = log
        self._state: dict[str, Any] = {}
        self._follow = asyncio.create_task(self._read_progress())

    @classmethod
    async def start(
        cls, servers: str, topics: Sequence[str], partitions: int, run_dir: Path
    ) -> AnswerReader:
        """Start reading the answer topics and the failed topic."""
        out, log = run_dir / "answers.json", run_dir / "reader.log"
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                script("reader.py"),
                "--servers",
                servers,
                "--topics",
                ",".join(topics),
                "--failed",
                FAILED,
                "--partitions",
                str(partitions),
                "--out",
                str(out),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_fd,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            os.close(log_fd)
        return cls(process, out, log)

    async def _read_progress(self) -> None:
        assert self._process.stdout is not None
        async for line in self._process.stdout:
            self._state = orjson.loads(line)

    @property
    def pid(self) -> int:
        """Its process id."""
        return self._process.pid

    def answered(self, topic: str, prefix: str) -> int:
        """How many events of a load have an answer on a topic."""
        return int(self._state.get("counts", {}).get(topic, {}).get(prefix, 0))

    def check(self) -> None:
        """Raise BenchError if it stopped, or if a router sent an event to the failed topic."""
        if self._process.returncode is not None:
            raise BenchError(f"the answer reader exited: {self._log.read_text()[-2000:]}")
        if self._state.get("failed"):
            raise BenchError(
                f"{self._state['failed']} event(s) went to {FAILED} (last: "
                f"{self._state.get('last_failure')})"
            )

    @property
    def duplicates(self) -> int:
        """Answers to events that already had one."""
        return int(self._state.get("duplicates", 0))

    async def finish(self) -> dict[str, dict[str, float]]:
        """Stop reading; every answer's read time by topic and event id."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 60)
        except TimeoutError:
            self._process.kill()
            raise BenchError("the answer reader did not stop within 60 s") from None
        await self._follow
        answers: dict[str, dict[str, float]] = orjson.loads(self._out.read_bytes())
        return answers

    async def kill(self) -> None:
        """Stop it at once (a measurement failed)."""
        if self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._follow.cancel()


async def produce(
    servers: str,
    prefix: str,
    count: int,
    rate: float | None,
    run_dir: Path,
    topic: str = TOPIC,
) -> tuple[array[float], float]:
    """Run the load generator; each event's send time and the CPU seconds the sending took."""
    times = run_dir / f"sent-{prefix}.bin"
    argv = [
        sys.executable,
        script("load.py"),
        "produce",
        "--servers",
        servers,
        "--topic",
        topic,
        "--prefix",
        prefix,
        "--count",
        str(count),
        "--times",
        str(times),
    ]
    if rate:
        argv += ["--rate", str(rate)]
    budget_s = (count / rate if rate else 0.0) + answer_budget_s(count)
    result = await run_json(argv, "the load generator", budget_s)
    sent = array("d")
    sent.frombytes(times.read_bytes())
    return sent, float(result["cpu_s"])


def answer_budget_s(count: int) -> float:
    """The longest a load of `count` events may take to be answered before it is called stuck."""
    return max(120.0, count / 100)


# ---------------------------------------------------------------- routers


def set_dotted(config: dict[str, Any], setting: str) -> None:
    """Apply one `section.key=value` setting (the value read as YAML) to a config tree."""
    path, _, raw = setting.partition("=")
    *sections, key = path.strip().split(".")
    node = config
    for section in sections:
        node = node.setdefault(section, {})
    node[key] = yaml.safe_load(raw)


def logistik_config(
    servers: str, groups: Sequence[Group], web_port: int, settings: Sequence[str]
) -> dict[str, Any]:
    """What a user must write for `logistik run`: broker, group, handlers, web port."""
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": servers, "group_id": "bench-logistik"},
        "discovery": {
            "handlers": [
                {
                    "name": group.name,
                    "event": TOPIC,
                    "endpoint": "127.0.0.1",
                    "port": group.port,
                    "path": "/predict",
                    "return_to": group.results,
                    **dict(group.fields),
                }
                for group in groups
            ]
        },
        "web": {"port": web_port},
    }
    for setting in settings:
        set_dotted(config, setting)
    return config


def start_router(
    router: str, servers: str, groups: Sequence[Group], ctx: Context, run_dir: Path
) -> Child:
    """Start the router of a Kafka measurement in its own process."""
    if router in LOGISTIK:
        path = run_dir / "logistik.yaml"
        port = free_port()
        settings = ctx.params.logistik_settings
        if router == "logistik-workers":
            settings = (*settings, f"workers={ctx.params.workers}")
        config = logistik_config(servers, groups, port, settings)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [sys.executable, "-m", "logistik", "run", "--config", str(path)]
        child = Child("logistik", argv, run_dir / "logistik.log", run_dir)
        child.web_port = port
        return child.start()
    (group,) = groups
    # Kafka alone is the confluent-kafka loop making the model's answers itself.
    loop = "plain-confluent" if router == "kafka-only" else router
    model = (
        ["--no-call"]
        if router == "kafka-only"
        else ["--url", f"http://127.0.0.1:{group.port}/predict"]
    )
    argv = [
        sys.executable,
        script(f"{loop.replace('-', '_')}.py"),
        "--bootstrap",
        servers,
        "--topic",
        TOPIC,
        "--group",
        "bench-plain",
        *model,
        "--results",
        group.results,
        "--concurrency",
        str(ctx.params.concurrency),
    ]
    return Child(TITLES[router], argv, run_dir / "router.log", run_dir).start()


# ---------------------------------------------------------------- measuring


async def wait_answers(
    reader: AnswerReader,
    router: Child,
    topics: Sequence[str],
    prefix: str,
    count: int,
    timeout_s: float,
    cap_s: float | None = None,
    every: Callable[[int], None] | None = None,
) -> bool:
    """Wait until every event has an answer on every topic; False when `cap_s` ran out first.

    Fails on a stall, on a timeout, on an event sent to the failed topic and when the router or
    the reader stops. `every` is called about every RSS_SAMPLE_S with the answers so far.
    """
    started = last_progress = sampled = time.monotonic()
    last = -1
    while (done := min(reader.answered(t, prefix) for t in topics)) < count:
        router.check()
        reader.check()
        now = time.monotonic()
        if done != last:
            last, last_progress = done, now
        if every is not None and now - sampled >= RSS_SAMPLE_S:
            every(done)
            sampled = now
        if cap_s is not None and now - started > cap_s:
            return False
        if now - started > timeout_s or now - last_progress > STALL_TIMEOUT_S:
            stalled = f" (none for the last {now - last_progress:.0f} s)" if done else ""
            raise BenchError(
                f"{router.name} produced {done} of {count} answers within "
                f"{now - started:.0f} s{stalled}; its log:\n{router.tail()}"
            )
        await asyncio.sleep(POLL_S)
    return True


class MemoryTrace:
    """The router's resident memory at the start, the middle and the end of a load."""

    def __init__(self, pid: int, count: int) -> None:
        self._pid = pid
        self._count = count
        self.figures: dict[str, float] = {"start": rss_kb(pid)[0] / 1024}

    def sample(self, answered: int) -> None:
        """Keep the first sample past half of the load as the middle."""
        if "middle" not in self.figures and answered >= self._count / 2:
            self.figures["middle"] = rss_kb(self._pid)[0] / 1024

    def end(self) -> dict[str, float]:
        """The figures, with the end and the peak."""
        now, peak = rss_kb(self._pid)
        self.figures.setdefault("middle", now / 1024)
        return {**self.figures, "end": now / 1024, "peak": peak / 1024}


@dataclass(frozen=True)
class KafkaLoad:
    """One Kafka measurement: which router, which groups, how many events, how fast."""

    phase: str
    router: str
    round: int
    groups: tuple[Group, ...]
    count: int
    rate: float | None = None
    wait_for: tuple[str, ...] = ()  # the answer topics that end it (default: every group's)
    cap_s: float | None = None  # the longest it may take; the events answered by then count
    hop: bool = False  # whether the reader reads the events too (paced: latency is the point)


async def measure_kafka(ctx: Context, load: KafkaLoad) -> Measurement:
    """On a fresh broker: start reader and router, warm up, send the load, await its answers."""
    ctx.runs += 1
    run_dir = ctx.tmp / f"{ctx.runs:02d}-{load.phase}-{load.router}-{load.round}"
    run_dir.mkdir()
    topics = [g.results for g in load.groups]
    wait_for = list(load.wait_for or topics)
    warm = ctx.params.concurrency * 2
    warm_broker = ctx.params.broker == "kafka"
    async with AsyncExitStack() as stack:
        broker = fresh_broker(ctx.params.broker, run_dir)
        # Started on this (the main) thread: the broker ends when the thread that started it does.
        stack.enter_context(broker)
        servers = broker.bootstrap_servers
        partitions = ctx.params.partitions
        extra = [BROKER_WARM_TOPIC] if warm_broker else []
        await asyncio.to_thread(
            create_topics, servers, [TOPIC, FAILED, *topics, *extra], partitions
        )
        read = [*topics, TOPIC, *extra] if load.hop else [*topics, *extra]
        reader = await AnswerReader.start(servers, read, partitions, run_dir)
        stack.push_async_callback(reader.kill)
        router = start_router(load.router, servers, load.groups, ctx, run_dir)
        stack.callback(router.stop)
        if warm_broker:
            await produce(
                servers,
                BROKER_WARM_UP,
                KAFKA_WARM_UP_EVENTS,
                KAFKA_WARM_UP_RATE,
                run_dir,
                topic=BROKER_WARM_TOPIC,
            )
            await wait_answers(
                reader, router, extra, BROKER_WARM_UP, KAFKA_WARM_UP_EVENTS, WARM_UP_TIMEOUT_S
            )
        await produce(servers, WARM_UP, warm, None, run_dir)
        await wait_answers(reader, router, wait_for, WARM_UP, warm, WARM_UP_TIMEOUT_S)
        if warm_broker and load.phase in ROUTER_WARM_UP_PHASES:
            await warm_up_router(reader, router, load, wait_for, servers, run_dir)
        settle_s = ctx.params.paced_warm_up_s
        if load.hop and load.rate and settle_s > 0:
            # Under a steady load a fresh broker still takes hundreds of ms per hop for 5-10 s
            # after the warm-up above, whichever router runs: latency is measured as a router
            # serving for hours sees it, after the same load has run through the same path.
            settle = max(1, round(load.rate * settle_s))
            await produce(servers, PACED_WARM_UP, settle, load.rate, run_dir)
            await wait_answers(
                reader, router, wait_for, PACED_WARM_UP, settle, WARM_UP_TIMEOUT_S + settle_s
            )
        roles = {"router": router.pid, "model": ctx.model.pid, "reader": reader.pid}
        if ctx.slow_model is not None and any(g.port == ctx.slow_model[1] for g in load.groups):
            roles["slow model"] = ctx.slow_model[0].pid
        if ctx.batch_model is not None and any(g.port == ctx.batch_model[1] for g in load.groups):
            roles["model"] = ctx.batch_model[0].pid
        pid = tansu_pid() if isinstance(broker, EmbeddedBroker) else broker.pid
        if pid is not None:
            roles["broker"] = pid
        before = {role: cpu_seconds(pid) for role, pid in roles.items()}
        retried_before = await retried(router)
        memory = MemoryTrace(router.pid, load.count)
        sending = asyncio.create_task(produce(servers, MEASURED, load.count, load.rate, run_dir))
        budget_s = (load.count / load.rate if load.rate else 0.0) + answer_budget_s(load.count)
        try:
            complete = await wait_answers(
                reader,
                router,
                wait_for,
                MEASURED,
                load.count,
                budget_s,
                load.cap_s,
                memory.sample,
            )
        except BaseException:
            sending.cancel()
            raise
        cpu = {role: cpu_seconds(pid) - before[role] for role, pid in roles.items()}
        rss = memory.end()
        peaks = {role: rss_kb(pid)[1] / 1024 for role, pid in roles.items()}
        duplicates = reader.duplicates
        retried_after = await retried(router)
        # Sending takes a fraction of answering, so it has ended even when the cap stopped us.
        sent, cpu["load"] = await sending
        answers = await reader.finish()
        code = await asyncio.to_thread(router.stop)
    result = kafka_result(load, sent, answers, wait_for, cpu, rss, complete, code, duplicates)
    result.rss_peak_mb = peaks
    if retried_before is not None and retried_after is not None:
        result.retried = retried_after - retried_before
        if result.retried:
            result.note = "; ".join(
                n for n in (result.note, f"{result.retried:,} passed to a retry topic") if n
            )
    if load.hop:
        arrived = answers.get(TOPIC, {})
        hops = [
            (at - sent[i]) * 1000
            for i in range(len(sent))
            if (at := arrived.get(event_id(MEASURED, i))) is not None
        ]
        result.hop_ms = percentiles(hops)
        answered = answers.get(wait_for[0], {})
        result.after_hop_ms = percentiles(
            [
                (answered[ident] - at) * 1000
                for ident, at in arrived.items()
                if ident in answered and ident.startswith(f"{MEASURED}-")
            ]
        )
    return result


async def warm_up_router(
    reader: AnswerReader,
    router: Child,
    load: KafkaLoad,
    wait_for: Sequence[str],
    servers: str,
    run_dir: Path,
) -> None:
    """Through the router measured: the broker's warm-up load (shared by its groups), then the
    measured burst itself, both unmeasured, so that the broker has compiled the router's paths."""
    groups = len(load.groups)
    paced = KAFKA_WARM_UP_EVENTS // groups
    await produce(servers, ROUTER_WARM_UP, paced, KAFKA_WARM_UP_RATE / groups, run_dir)
    budget_s = WARM_UP_TIMEOUT_S + paced / KAFKA_WARM_UP_RATE * groups
    await wait_answers(reader, router, wait_for, ROUTER_WARM_UP, paced, budget_s)
    await produce(servers, ROUTER_BURST_WARM_UP, load.count, None, run_dir)
    budget_s = WARM_UP_TIMEOUT_S + answer_budget_s(load.count)
    await wait_answers(reader, router, wait_for, ROUTER_BURST_WARM_UP, load.count, budget_s)


DEFERRED_METRIC = re.compile(rb"^logistik_topic_deferred_total\{[^}]*\} ([0-9.e+]+)$", re.M)


async def retried(router: Child) -> int | None:
    """(event, group) pairs logistik has passed to its retry topics, from its /metrics."""
    if router.web_port is None:
        return None
    url = f"http://127.0.0.1:{router.web_port}/metrics"

    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=10) as response:
            body: bytes = response.read()
        return body

    try:
        text = await asyncio.to_thread(fetch)
    except OSError as exc:
        progress(f"  could not read logistik's /metrics: {exc}")
        return None
    return int(sum(float(n) for n in DEFERRED_METRIC.findall(text)))


def kafka_result(
    load: KafkaLoad,
    sent: array[float],
    answers: dict[str, dict[str, float]],
    wait_for: Sequence[str],
    cpu: dict[str, float],
    rss: dict[str, float],
    complete: bool,
    exit_code: int | None,
    duplicates: int,
) -> Measurement:
    """Throughput from the first send to the last answer; latency per answer, matched by id."""
    latencies: list[float] = []
    answered, last = load.count, 0.0
    steady: float | None = None
    for topic in wait_for:
        got = answers.get(topic, {})
        times: list[float] = []
        for index in range(load.count):
            at = got.get(event_id(MEASURED, index))
            if at is None:
                continue
            times.append(at)
            last = max(last, at)
            if index < len(sent):
                latencies.append((at - sent[index]) * 1000)
        answered = min(answered, len(times))
        if topic == wait_for[0]:
            steady = steady_rate(times)
    notes = []
    if exit_code not in (0, None):
        notes.append(f"exited with code {exit_code} when stopped")
    if duplicates:
        notes.append(f"{duplicates} duplicate answer(s)")
    if not complete:
        notes.append(f"stopped after {load.cap_s:g} s")
    return Measurement(
        load.phase,
        load.router,
        load.round,
        answered,
        last - sent[0] if answered else 0.0,
        percentiles(latencies),
        cpu,
        groups=len(load.groups),
        rss_mb=rss,
        complete=complete,
        note="; ".join(notes),
        steady_events_per_s=steady,
    )


STEADY_MIN_ANSWERS = 200


def steady_rate(answered_at: list[float]) -> float | None:
    """Answers per second from the median answer to the last; None for too few answers."""
    if len(answered_at) < STEADY_MIN_ANSWERS:
        return None
    times = sorted(answered_at)
    half = times[len(times) // 2 :]
    span_s = half[-1] - half[0]
    return (len(half) - 1) / span_s if span_s > 0 else None


async def measure_direct(
    ctx: Context, phase: str, round_: int, count: int, rate: float | None
) -> Measurement:
    """The model called without Kafka by bench/load.py with the chosen Python client."""
    argv = [
        sys.executable,
        script("load.py"),
        "http",
        "--url",
        ctx.model_url,
        "--client",
        ctx.params.client,
        "--count",
        str(count),
        "--concurrency",
        str(ctx.params.concurrency),
    ]
    if rate:
        argv += ["--rate", str(rate)]
    model_before = cpu_seconds(ctx.model.pid)
    budget_s = (count / rate if rate else 0.0) + answer_budget_s(count)
    result = await run_json(argv, "the direct load", budget_s)
    return Measurement(
        phase,
        "direct",
        round_,
        count,
        result["seconds"],
        result["latency_ms"],
        # The model's CPU includes the client's warm-up calls (4 per connection).
        {"load": result["cpu_s"], "model": cpu_seconds(ctx.model.pid) - model_before},
    )


WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""
_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> tuple[int, float, dict[str, float]]:
    """Requests, seconds and latency percentiles (ms) from wrk's --latency output."""

    def ms(text: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(number) * _WRK_UNITS[unit]

    if "Non-2xx" in output or "Socket errors" in output:
        raise BenchError(f"wrk saw errors:\n{output}")
    done = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    if done is None:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    latency = {f"p{q}": ms(v) for q, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", output, re.M)}
    peak = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output, re.M)
    latency["max"] = ms(peak.group(1)) if peak else 0.0
    return int(done.group(1)), ms(done.group(2)) / 1000, latency


async def measure_wrk(ctx: Context, round_: int) -> Measurement:
    """The model called by wrk (one thread, the same connections in flight) for wrk_seconds."""
    body = EventMaker(seed=1).make(event_id("wrk", 0), 0)[1].decode()
    lua = ctx.tmp / "wrk.lua"
    lua.write_text(WRK_SCRIPT.format(body=body))
    wrk = shutil.which("wrk")
    assert wrk is not None
    argv = [
        wrk,
        "-t1",
        f"-c{ctx.params.concurrency}",
        f"-d{ctx.params.wrk_seconds:g}s",
        "--latency",
        "-s",
        str(lua),
        ctx.model_url,
    ]
    model_before = cpu_seconds(ctx.model.pid)
    output, cpu_s = await asyncio.to_thread(
        run_with_rusage, argv, ctx.params.wrk_seconds + answer_budget_s(0)
    )
    requests, seconds, latency = parse_wrk(output)
    return Measurement(
        "burst",
        "direct-wrk",
        round_,
        requests,
        seconds,
        latency,
        {"load": cpu_s, "model": cpu_seconds(ctx.model.pid) - model_before},
    )


def one_group(ctx: Context) -> tuple[Group, ...]:
    """The single group of the burst and paced measurements."""
    return (Group("bench-model", ctx.model_port, RESULTS),)


async def measure(
    ctx: Context, phase: str, router: str, round_: int, rate: float | None
) -> Measurement:
    """One burst or paced measurement of one router."""
    count = ctx.params.events if rate is None else max(1, round(rate * ctx.params.paced_seconds))
    if router == "direct-wrk":
        return await measure_wrk(ctx, round_)
    if router == "direct":
        return await measure_direct(ctx, phase, round_, count, rate)
    load = KafkaLoad(phase, router, round_, one_group(ctx), count, rate, hop=rate is not None)
    return await measure_kafka(ctx, load)


async def measure_groups(ctx: Context, groups: int, round_: int) -> Measurement:
    """logistik with `groups` groups on one topic, each with its own answer topic."""
    chosen = tuple(Group(f"group-{i}", ctx.model_port, f"{RESULTS}-{i}") for i in range(groups))
    load = KafkaLoad("groups", "logistik", round_, chosen, ctx.params.events)
    return await measure_kafka(ctx, load)


async def measure_slow(ctx: Context, round_: int) -> Measurement:
    """logistik with a fast group beside a group whose model answers in slow_delay_s."""
    _, slow_port = await slow_model(ctx)
    fast = Group("fast", ctx.model_port, f"{RESULTS}-fast")
    slow = Group("slow", slow_port, f"{RESULTS}-slow")
    load = KafkaLoad(
        "slow",
        "logistik",
        round_,
        (fast, slow),
        ctx.params.events,
        wait_for=(fast.results,),
        cap_s=ctx.params.slow_seconds,
    )
    result = await measure_kafka(ctx, load)
    result.groups = 1  # the figures are the fast group's
    return result


async def measure_batch(ctx: Context, round_: int, size: int, rate: float | None) -> Measurement:
    """logistik calling a model whose cost is per request, one event or `size` per request."""
    if ctx.batch_model is None:
        ctx.batch_model = await start_model(ctx.tmp, ctx.stack, cost_ms=ctx.params.batch_cost_ms)
    fields = (("batch_max_size", size),) if size > 1 else ()
    group = Group("batch-model", ctx.batch_model[1], RESULTS, fields)
    params = ctx.params
    phase, count = "batch", params.events
    if rate is not None:
        phase, count = "batch-paced", max(1, round(rate * params.paced_seconds))
    load = KafkaLoad(phase, "logistik", round_, (group,), count, rate, hop=rate is not None)
    result = await measure_kafka(ctx, load)
    result.batch = size
    return result


def half_peak(results: Sequence[Measurement], params: Params) -> float:
    """The paced rate: given, or half of logistik's median burst rate in this run."""
    if params.paced_rate:
        return params.paced_rate
    rates = [r.events / r.seconds for r in results if r.phase == "burst" and r.router == "logistik"]
    if not rates:
        raise BenchError("paced needs logistik's burst rate: add the burst phase or --paced-rate")
    return median(rates) / 2


async def run_beside(ctx: Context, keep: Callable[[Measurement], None]) -> None:
    """The groups and slow phases in rounds, each round with its own one-group burst.

    Each ratio compares runs a minute apart, rather than with the burst phase's, measured
    earlier: this machine's pace drifts by more than the effects measured here.
    """
    params = ctx.params
    for round_ in range(1, params.rounds + 1):
        progress(f"groups: logistik with 1 group (the reference), round {round_} ...")
        keep(await measure_groups(ctx, 1, round_))
        if "groups" in params.phases:
            for groups in params.groups:
                progress(f"groups: logistik with {groups} groups on one topic, round {round_} ...")
                keep(await measure_groups(ctx, groups, round_))
        if "slow" in params.phases:
            progress(
                f"slow: a fast group beside one answering in {params.slow_delay_s:g} s, "
                f"round {round_} ..."
            )
            keep(await measure_slow(ctx, round_))


async def run_batch(ctx: Context, keep: Callable[[Measurement], None]) -> None:
    """The batch phase: bursts one event and `batch_size` per request in turn, then low rates."""
    params = ctx.params
    sizes = (1, params.batch_size)
    for round_ in range(1, params.rounds + 1):
        for size in sizes:
            progress(
                f"batch: {size} event(s) per request to a model spending "
                f"{params.batch_cost_ms:g} ms per request, round {round_} ..."
            )
            keep(await measure_batch(ctx, round_, size, None))
    for size in sizes:
        progress(f"batch: {size} per request at {params.batch_paced_rate:g} events/s ...")
        keep(await measure_batch(ctx, 1, size, params.batch_paced_rate))


async def run(params: Params, record: Callable[[Measurement], None]) -> None:
    """Every chosen phase: bursts and paced loads in rounds, router after router, then the rest."""
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    results: list[Measurement] = []

    def keep(result: Measurement) -> None:
        results.append(result)
        record(result)
        rate = result.events / result.seconds if result.seconds else 0.0
        progress(
            f"  {rate:,.0f} events/s, p50 {result.latency_ms['p50']:.1f} ms, "
            f"p99 {result.latency_ms['p99']:.1f} ms{'; ' + result.note if result.note else ''}"
        )

    with tempfile.TemporaryDirectory(prefix="logistik-bench-") as tmp:
        async with AsyncExitStack() as stack:
            model, port = await start_model(Path(tmp), stack)
            ctx = Context(params, Path(tmp), stack, model, port)
            # Rounds in turn (direct, plain loops, logistik, direct, ...) so that a slow spell of
            # the machine falls on every router alike; the ratios are taken round by round.
            for phase in ("burst", "paced"):
                if phase not in params.phases:
                    continue
                # The paced latency is measured with the shipped defaults only.
                routers = [
                    r
                    for r in params.routers
                    if phase == "burst" or r not in ("direct-wrk", "logistik-workers")
                ]
                rate = half_peak(results, params) if phase == "paced" else None
                for round_ in range(1, params.rounds + 1):
                    for router in routers:
                        progress(f"{phase}, {router}, round {round_} ...")
                        keep(await measure(ctx, phase, router, round_, rate))
            if "groups" in params.phases or "slow" in params.phases:
                await run_beside(ctx, keep)
            if "batch" in params.phases:
                await run_batch(ctx, keep)
            if "soak" in params.phases:
                progress(f"soak: logistik, {params.soak_events:,} events ...")
                soak = KafkaLoad(
                    "soak", "logistik", 1, one_group(ctx), params.soak_events, params.soak_rate
                )
                keep(await measure_kafka(ctx, soak))


# ---------------------------------------------------------------- the report


def ratio_of(
    ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]], figure: str
) -> dict[str, Any] | None:
    """The median of per-round ratios ours/theirs of a figure, with their range."""
    by_round = {m["round"]: m[figure] for m in theirs}
    values = sorted(m[figure] / by_round[m["round"]] for m in ours if by_round.get(m["round"]))
    if not values:
        return None
    return {"median": median(values), "low": values[0], "high": values[-1], "rounds": len(values)}


def faster_plain(bursts: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Round by round, the plain loop that moved more events/s."""
    rounds: dict[int, dict[str, Any]] = {}
    for router in PLAIN:
        for m in bursts.get(router, []):
            best = rounds.get(m["round"])
            if best is None or m["events_per_s"] > best["events_per_s"]:
                rounds[m["round"]] = m
    return list(rounds.values())


def latency_added(
    ours: Sequence[dict[str, Any]], direct: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """Median (and range) over rounds of the p50 and p99 added over a direct call."""
    by_round = {m["round"]: m["latency_ms"] for m in direct}
    pairs = [(m["latency_ms"], by_round[m["round"]]) for m in ours if m["round"] in by_round]
    if not pairs:
        return None
    added = {}
    for q in ("p50", "p99"):
        values = sorted(o[q] - d[q] for o, d in pairs)
        added[q] = {"median": median(values), "low": values[0], "high": values[-1]}
    return added


def burst_ratios(bursts: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """logistik's events/s against each reference, round by round; Kafka alone's and the
    workers' against the faster plain loop."""
    logistik = bursts.get("logistik", [])
    found: dict[str, Any] = {"throughput": {}}
    references = {r: bursts.get(r, []) for r in ROUTERS if r != "logistik"}
    references["plain-faster"] = faster_plain(bursts)
    for name, theirs in references.items():
        ratio = ratio_of(logistik, theirs, "events_per_s")
        if ratio is not None:
            found["throughput"][name] = ratio
    # How far above the plain loops Kafka alone (no model call) reaches on this machine.
    ceiling = ratio_of(bursts.get("kafka-only", []), references["plain-faster"], "events_per_s")
    if ceiling is not None:
        found["kafka_only_vs_plain"] = ceiling
    workers = bursts.get("logistik-workers", [])
    vs_plain = ratio_of(workers, references["plain-faster"], "events_per_s")
    if vs_plain is not None:
        found["workers"] = {
            "vs_one": ratio_of(workers, logistik, "events_per_s"),
            "vs_plain": vs_plain,
        }
    return found


def summarise(measurements: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Ratios, added latency, groups, slow group and memory, from the measurements."""

    def of(phase: str) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for m in measurements:
            if m["phase"] == phase:
                found.setdefault(m["router"], []).append(m)
        return found

    bursts, paced = of("burst"), of("paced")
    logistik = bursts.get("logistik", [])
    summary: dict[str, Any] = {**burst_ratios(bursts), "latency_added": {}}
    for router in ("logistik", *PLAIN, "kafka-only"):
        added = latency_added(paced.get(router, []), paced.get("direct", []))
        if added is not None:
            summary["latency_added"][router] = added
    alone = median(m["events_per_s"] for m in logistik) if logistik else None
    summary.update(beside_one_group(measurements, alone))
    for m in measurements:
        if m["phase"] == "soak":
            summary["soak"] = {"events": m["events"], **m["rss_mb"]}
    batched = batching(measurements)
    if batched:
        summary["batch"] = batched
    return summary


def batching(measurements: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batched against unbatched calls to the per-request-cost model: events/s, latency."""
    burst = [m for m in measurements if m["phase"] == "batch"]
    single = {m["round"]: m for m in burst if m["batch"] == 1}
    batched = {m["round"]: m for m in burst if m["batch"] > 1}
    rounds = sorted(set(single) & set(batched))
    if not rounds:
        return {}
    ratios = [batched[r]["events_per_s"] / single[r]["events_per_s"] for r in rounds]
    found: dict[str, Any] = {
        "size": batched[rounds[0]]["batch"],
        "unbatched_events_per_s": median(single[r]["events_per_s"] for r in rounds),
        "batched_events_per_s": median(batched[r]["events_per_s"] for r in rounds),
        "ratio": {
            "median": median(ratios),
            "low": min(ratios),
            "high": max(ratios),
            "rounds": len(rounds),
        },
    }
    paced = {m["batch"]: m for m in measurements if m["phase"] == "batch-paced"}
    if 1 in paced and found["size"] in paced:
        alone, together = paced[1], paced[found["size"]]
        found["paced"] = {
            "events_per_s": together["events_per_s"],
            "unbatched_ms": alone["latency_ms"],
            "batched_ms": together["latency_ms"],
            "added_p50_ms": together["latency_ms"]["p50"] - alone["latency_ms"]["p50"],
            "added_p99_ms": together["latency_ms"]["p99"] - alone["latency_ms"]["p99"],
        }
    return found


def beside_one_group(measurements: Sequence[dict[str, Any]], alone: float | None) -> dict[str, Any]:
    """Several groups, and a slow group beside a fast one, against one group's rate.

    The reference is the one-group burst of the same round (reports from before it was
    measured: logistik's median burst rate, `alone`). Medians over rounds, with the range of
    the per-round ratios.
    """
    groups = [m for m in measurements if m["phase"] == "groups"]
    reference = {m["round"]: m for m in groups if m["groups"] == 1}

    def versus(ms: Sequence[dict[str, Any]], figure: str) -> dict[str, Any] | None:
        theirs: list[dict[str, Any]] = list(reference.values())
        if not theirs and alone:  # a report from before the per-round reference
            theirs = [{"round": m["round"], figure: alone} for m in ms]
        return ratio_of(ms, theirs, figure)

    def retried(ms: Sequence[dict[str, Any]]) -> int | None:
        known = [m["retried"] for m in ms if m.get("retried") is not None]
        return sum(known) if known else None

    rows = []
    for count in sorted({m["groups"] for m in groups}):
        ms = [m for m in groups if m["groups"] == count]
        ratio = versus(ms, "calls_per_s") if count > 1 else None
        rows.append(
            {
                "groups": count,
                "rounds": len(ms),
                "events_per_s": median(m["events_per_s"] for m in ms),
                "calls_per_s": median(m["calls_per_s"] for m in ms),
                "calls_vs_one_group": ratio["median"] if ratio else None,
                "calls_vs_one_group_range": ratio,
                "retried": retried(ms),
            }
        )
    found: dict[str, Any] = {"groups": [r for r in rows if r["groups"] > 1 or len(rows) > 1]}
    slow = [m for m in measurements if m["phase"] == "slow"]
    if slow:
        ratio = versus(slow, "events_per_s")
        base = median(m["events_per_s"] for m in reference.values()) if reference else alone
        # Reports from before the steady figure have none: no steady comparison then.
        steady = ratio_of(
            [m for m in slow if m.get("steady_events_per_s")],
            [m for m in reference.values() if m.get("steady_events_per_s")],
            "steady_events_per_s",
        )
        found["slow"] = {
            "fast_events_per_s": median(m["events_per_s"] for m in slow),
            "alone_events_per_s": base,
            "change": ratio["median"] - 1 if ratio else None,
            "change_range": None if ratio is None else [ratio["low"] - 1, ratio["high"] - 1],
            "rounds": len(slow),
            "complete": all(m["complete"] for m in slow),
            "retried": retried(slow),
            "steady_change": None if steady is None else steady["median"] - 1,
            "steady_change_range": (
                None if steady is None else [steady["low"] - 1, steady["high"] - 1]
            ),
        }
    return found


def goals(summary: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """The issue's goals: what each asks, what was measured, whether it is met."""
    found: list[tuple[str, str, bool | None]] = []
    throughput = summary["throughput"]
    if "plain-faster" in throughput:
        value = throughput["plain-faster"]["median"]
        found.append(("≥ 1.5 x the faster plain loop", f"{value:.2f} x", value >= 1.5))
    if "workers" in summary:
        value = summary["workers"]["vs_plain"]["median"]
        found.append(
            ("≥ 1.5 x the faster plain loop, with --workers", f"{value:.2f} x", value >= 1.5)
        )
    for name, how in (("direct", "a Python client"), ("direct-wrk", "wrk")):
        if name in throughput:
            value = throughput[name]["median"]
            found.append((f"≥ 0.8 x the direct load ({how})", f"{value:.2f} x", value >= 0.8))
    added = summary["latency_added"].get("logistik")
    if added:
        p50, p99 = added["p50"]["median"], added["p99"]["median"]
        found.append(("added p50 ≤ 2 ms at half peak", f"{p50:+.1f} ms", p50 <= 2))
        found.append(("added p99 ≤ 10 ms at half peak", f"{p99:+.1f} ms", p99 <= 10))
    for row in summary.get("groups", []):
        value = row["calls_vs_one_group"]
        if value is None:
            continue
        found.append(
            (
                f"{row['groups']} groups: model calls/s ≥ 1 group's",
                f"{value:.2f} x",
                value >= 1.0,
            )
        )
    if "slow" in summary and summary["slow"]["change"] is not None:
        change = summary["slow"]["change"]
        found.append(
            ("a slow group changes the fast one < 10 %", f"{change:+.0%}", abs(change) < 0.1)
        )
    if "batch" in summary:
        batch = summary["batch"]
        value = batch["ratio"]["median"]
        found.append(
            (f"batch {batch['size']}: ≥ 3 x the events/s unbatched", f"{value:.2f} x", value >= 3)
        )
        if "paced" in batch:
            added = batch["paced"]["added_p50_ms"]
            found.append(
                (
                    "batch: added p50 at a low rate ≤ batch_max_wait_ms (5 ms)",
                    f"{added:+.1f} ms",
                    added <= 5,
                )
            )
    if "soak" in summary:
        soak = summary["soak"]
        found.append(
            (
                f"memory flat over {soak['events']:,} events",
                f"{soak['start']:.0f} → {soak['middle']:.0f} → {soak['end']:.0f} MB",
                None,  # judged by eye: a few MB of caches filling up is not growth
            )
        )
    return found


def _range(figure: dict[str, Any], fmt: str = "{:.2f}") -> str:
    """A median with its range, e.g. `0.83 (0.52-1.14)`; signed figures read `+1.0 (-0.5 to +2)`."""
    text = fmt.format(figure["median"])
    if figure.get("rounds", 2) > 1 and figure["low"] != figure["high"]:
        between = " to " if "+" in fmt else "-"
        text += f" ({fmt.format(figure['low'])}{between}{fmt.format(figure['high'])})"
    return text


def title(router: str, report: dict[str, Any]) -> str:
    """A router's name as the tables show it."""
    parameters = report["parameters"]
    return TITLES[router].format(client=parameters["client"], workers=parameters.get("workers", 2))


def markdown(report: dict[str, Any]) -> str:
    """The README's tables, from a JSON report."""
    params, host = report["parameters"], report["machine"]
    measurements = report["measurements"]
    summary = summarise(measurements)  # recomputed: a report's tables follow this code
    lines = [
        f"{host['cores']} cores ({host['cpu'] or 'unknown CPU'}), Python {report['python']}, "
        f"load average {host['load_average'][0]:.2f} at the start; {params['events']:,} events "
        f"of 300-1000 B per burst, {params['partitions']} partitions, {params['concurrency']} "
        f"calls in flight, {params['rounds']} round(s), medians of per-round figures (range); "
        f"a fresh {BROKER_TITLES[params.get('broker', 'tansu')]} broker per Kafka measurement.",
    ]
    if params.get("logistik_settings"):
        lines.append(f"logistik settings changed: {', '.join(params['logistik_settings'])}.")
    lines += burst_table(measurements, summary, report)
    lines += cpu_table(measurements, report)
    lines += paced_table(measurements, summary, report)
    lines += rest_table(summary, params)
    found = goals(summary)
    if found:
        lines += ["", "| goal | measured | met |", "|---|---|---|"]
        for goal, value, met in found:
            verdict = "see figures" if met is None else ("yes" if met else "**no**")
            lines.append(f"| {goal} | {value} | {verdict} |")
    return "\n".join(lines)


def burst_table(
    measurements: Sequence[dict[str, Any]], summary: dict[str, Any], report: dict[str, Any]
) -> list[str]:
    """Throughput of every router in bursts, with logistik's ratio to each."""
    lines: list[str] = []
    for router in ROUTERS:
        runs = [m for m in measurements if m["phase"] == "burst" and m["router"] == router]
        if not runs:
            continue
        rates = sorted(m["events_per_s"] for m in runs)
        rate = {"median": median(rates), "low": rates[0], "high": rates[-1], "rounds": len(runs)}
        ratio = summary["throughput"].get(router)
        cpu = [m["cpu_us_per_event"] for m in runs]
        router_cpu = [c["router"] for c in cpu if "router" in c]
        rss = [m["rss_mb"]["end"] for m in runs if "end" in m["rss_mb"]]
        lines.append(
            f"| {title(router, report)} | {_range(rate, '{:,.0f}')} | "
            f"{_range(ratio) if ratio else '-'} | "
            f"{median(m['latency_ms']['p50'] for m in runs):.1f} | "
            f"{median(m['latency_ms']['p99'] for m in runs):.1f} | "
            f"{f'{median(router_cpu):.0f}' if router_cpu else '-'} | "
            f"{median(sum(c.values()) for c in cpu):.0f} | "
            f"{f'{median(rss):.0f}' if rss else '-'} |"
        )
    if not lines:
        return []
    header = [
        "",
        "| burst | events/s | logistik ÷ it | p50 ms | p99 ms | router CPU µs/event "
        "| all CPU µs/event | router RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    plain = summary["throughput"].get("plain-faster")
    if plain:
        lines += ["", f"logistik ÷ the faster plain loop, round by round: {_range(plain)}."]
    ceiling = summary.get("kafka_only_vs_plain")
    if ceiling:
        lines += [
            f"Kafka alone (the confluent-kafka loop, no model call) ÷ the faster plain loop: "
            f"{_range(ceiling)}."
        ]
    scaled = summary.get("workers")
    if scaled:
        workers = report["parameters"].get("workers", 2)
        line = f"`logistik run --workers {workers}` ÷ the faster plain loop: "
        line += _range(scaled["vs_plain"])
        if scaled["vs_one"]:
            line += f"; ÷ `logistik run` (one worker): {_range(scaled['vs_one'])}"
        lines += [line + "."]
    return header + lines


def cpu_table(measurements: Sequence[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    """CPU µs per event of every process, burst medians."""
    roles = ("router", "model", "broker", "load", "reader")
    lines = []
    for router in ROUTERS:
        runs = [m for m in measurements if m["phase"] == "burst" and m["router"] == router]
        if not runs:
            continue
        cells = []
        for role in roles:
            values = [m["cpu_us_per_event"][role] for m in runs if role in m["cpu_us_per_event"]]
            cells.append(f"{median(values):.0f}" if values else "-")
        lines.append(f"| {title(router, report)} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return ["", "| CPU µs/event (burst) | " + " | ".join(roles) + " |", "|---" * 6 + "|", *lines]


def paced_table(
    measurements: Sequence[dict[str, Any]], summary: dict[str, Any], report: dict[str, Any]
) -> list[str]:
    """Latency at half of logistik's peak, and what each router adds over a direct call."""
    paced = [m for m in measurements if m["phase"] == "paced"]
    if not paced:
        return []
    rate = median(m["events_per_s"] for m in paced)
    settle_s = report["parameters"].get("paced_warm_up_s", 0)
    settled = f", after {settle_s:g} s of it" if settle_s else ""
    lines = [
        "",
        f"| paced, ~{rate:,.0f} events/s{settled} | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| Kafka hop p50 / p99 ms | event readable → answer readable p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for router in ROUTERS:
        runs = [m for m in paced if m["router"] == router]
        if not runs:
            continue
        added = summary["latency_added"].get(router)
        hops = [m["hop_ms"] for m in runs if m.get("hop_ms")]
        hop = (
            f"{median(h['p50'] for h in hops):.1f} / {median(h['p99'] for h in hops):.1f}"
            if hops
            else "-"
        )
        afters = [m["after_hop_ms"] for m in runs if m.get("after_hop_ms")]
        after = (
            f"{median(h['p50'] for h in afters):.1f} / {median(h['p99'] for h in afters):.1f}"
            if afters
            else "-"
        )
        lines.append(
            f"| {title(router, report)} | {median(m['latency_ms']['p50'] for m in runs):.1f} | "
            f"{median(m['latency_ms']['p99'] for m in runs):.1f} | "
            + (
                f"{_range(added['p50'], '{:+.1f}')} | {_range(added['p99'], '{:+.1f}')} | "
                if added
                else "- | - | "
            )
            + f"{hop} | {after} |"
        )
    return lines


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def rest_table(summary: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Groups on one topic, a slow group beside a fast one, memory over a long run."""
    lines: list[str] = []
    if summary.get("groups"):
        lines += [
            "",
            "| logistik, groups on one topic | events/s | model calls/s | calls/s ÷ 1 group's "
            "(range) | via a retry topic |",
            "|---|---|---|---|---|",
        ]
        for row in summary["groups"]:
            spread = row.get("calls_vs_one_group_range")
            ratio = (
                "- (the reference)"
                if row["calls_vs_one_group"] is None
                else f"{row['calls_vs_one_group']:.2f}"
                + (
                    f" ({spread['low']:.2f}-{spread['high']:.2f})"
                    if spread and row["rounds"] > 1
                    else ""
                )
            )
            lines.append(
                f"| {row['groups']} | {row['events_per_s']:,.0f} | {row['calls_per_s']:,.0f} | "
                f"{ratio} | {_count(row.get('retried'))} |"
            )
    if "slow" in summary:
        slow = summary["slow"]
        alone = ""
        if slow["change"] is not None:
            spread = slow.get("change_range")
            many = spread and slow.get("rounds", 1) > 1
            within = f", {spread[0]:+.0%} to {spread[1]:+.0%}" if many else ""
            alone = (
                f" against {slow['alone_events_per_s']:,.0f} alone ({slow['change']:+.0%}{within})"
            )
        capped = "" if slow["complete"] else f", measured for {params['slow_seconds']:g} s"
        retried = slow.get("retried")
        via = "" if retried is None else f"; {retried:,} (event, group) pairs via a retry topic"
        rounds = slow.get("rounds", 1)
        over = f" (medians of {rounds} rounds)" if rounds > 1 else ""
        steady = ""
        if slow.get("steady_change") is not None:
            low, high = slow["steady_change_range"]
            within = f", {low:+.0%} to {high:+.0%}" if rounds > 1 else ""
            steady = (
                "; over the second half of its answers, once the burst's start is behind, "
                f"{slow['steady_change']:+.0%}{within} against the same half alone"
            )
        lines += [
            "",
            f"A group whose model answers in {params['slow_delay_s']:g} s beside a fast group: "
            f"the fast group moved {slow['fast_events_per_s']:,.0f} events/s{alone}{capped}"
            f"{via}{steady}{over}.",
        ]
    if "batch" in summary:
        lines += batch_lines(summary["batch"], params)
    if "soak" in summary:
        soak = summary["soak"]
        rate = params.get("soak_rate")
        sent = f"sent at {rate:,.0f} events/s" if rate else "sent at once"
        lines += [
            "",
            f"logistik's RSS over {soak['events']:,} events ({sent}): {soak['start']:.0f} MB "
            "at the start, "
            f"{soak['middle']:.0f} MB in the middle, {soak['end']:.0f} MB at the end "
            f"(peak {soak['peak']:.0f} MB).",
        ]
    return lines


def batch_lines(batch: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The batch phase: events/s with and without batches, and the latency batches add."""
    cost = params.get("batch_cost_ms", 0)
    lines = [
        "",
        f"A model spending {cost:g} ms of CPU per request (whatever its size), called by "
        f"logistik one event per request: {batch['unbatched_events_per_s']:,.0f} events/s; "
        f"with `batch_max_size: {batch['size']}`: {batch['batched_events_per_s']:,.0f} "
        f"events/s ({_range(batch['ratio'])} x).",
    ]
    paced = batch.get("paced")
    if paced:
        alone, together = paced["unbatched_ms"], paced["batched_ms"]
        lines.append(
            f"At {params.get('batch_paced_rate', 0):g} events/s, p50 / p99 from send to answer: "
            f"{alone['p50']:.1f} / {alone['p99']:.1f} ms one per request, "
            f"{together['p50']:.1f} / {together['p99']:.1f} ms batched "
            f"({paced['added_p50_ms']:+.1f} / {paced['added_p99_ms']:+.1f} ms)."
        )
    return lines


def build_report(
    params: Params, measurements: Sequence[Measurement], host: dict[str, Any]
) -> dict[str, Any]:
    """The JSON report: machine, parameters, every measurement and the summary."""
    rows = [m.to_json() for m in measurements]
    return {
        "machine": {**host, "system": f"{platform.system()} {platform.machine()}"},
        "python": platform.python_version(),
        "parameters": asdict(params),
        "model_server": "bench/model_server.py raw (asyncio Protocol on uvloop)",
        "measurements": rows,
        "summary": summarise(rows),
    }


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    defaults = Params()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--events", type=int, default=defaults.events, help="events per burst")
    add("--concurrency", type=int, default=defaults.concurrency, help="model calls in flight")
    add("--partitions", type=int, default=defaults.partitions, help="partitions per topic")
    add("--rounds", type=int, default=defaults.rounds, help="burst and paced rounds, in turn")
    add("--phases", default=",".join(PHASES), help="comma-separated subset of these")
    add("--routers", default=",".join(ROUTERS), help="comma-separated subset of these")
    add("--client", help="the direct load's Python client (default: the fastest installed)")
    add("--wrk-seconds", type=float, default=defaults.wrk_seconds, help="length of a wrk run")
    add("--paced-rate", type=float, help="events/s of paced runs (default: half logistik's peak)")
    add("--paced-seconds", type=float, default=defaults.paced_seconds, help="length of paced runs")
    add(
        "--paced-warm-up-s",
        type=float,
        default=defaults.paced_warm_up_s,
        help="the same paced load through the same path before each paced run, not measured",
    )
    add("--groups", default="3,10", help="group counts of the groups phase")
    add("--slow-delay-s", type=float, default=defaults.slow_delay_s, help="the slow model's delay")
    add("--slow-seconds", type=float, default=defaults.slow_seconds, help="cap of the slow phase")
    add("--soak-events", type=int, default=defaults.soak_events, help="events of the long run")
    add("--soak-rate", type=float, help="events/s of the long run (default: all at once)")
    add("--batch-size", type=int, default=defaults.batch_size, help="batch_max_size measured")
    add(
        "--batch-cost-ms",
        type=float,
        default=defaults.batch_cost_ms,
        help="CPU the batch phase's model spends per request",
    )
    add(
        "--batch-paced-rate",
        type=float,
        default=defaults.batch_paced_rate,
        help="events/s of the batch phase's latency runs",
    )
    add(
        "--logistik-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a logistik setting, e.g. log_level=warning (to measure a lever; "
        "the report says so)",
    )
    add(
        "--workers",
        type=int,
        default=defaults.workers,
        help="--workers of the logistik-workers router (N routers on this host)",
    )
    add(
        "--broker",
        choices=("tansu", "kafka"),
        default=defaults.broker,
        help="the broker started fresh for each Kafka measurement: embedded Tansu, or Apache "
        "Kafka (its jars: python -m tests.support.apache_kafka fetch)",
    )
    add("--report", metavar="PATH", help="write the JSON report here")
    add("--markdown", metavar="REPORT", help="print the README tables of a JSON report and exit")
    return parser.parse_args(argv)


def choose_client(asked: str | None) -> str:
    """The direct load's client: the one asked for, or the fastest one installed."""
    if asked:
        if asked not in CLIENTS:
            sys.exit(f"--client: choose from {', '.join(CLIENTS)}")
        if installed(asked) is None:
            sys.exit(f"--client {asked}: not installed (pip install 'logistik[bench]')")
        return asked
    return next(c for c in FASTEST_CLIENTS if installed(c) is not None)


def params_from(args: argparse.Namespace) -> Params:
    """Validated parameters; a bad value exits with a one-line message."""

    def subset(text: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
        chosen = [p.strip() for p in text.split(",") if p.strip()]
        unknown = [p for p in chosen if p not in allowed]
        if unknown or not chosen:
            sys.exit(f"{flag}: unknown {', '.join(unknown) or '(none)'}; choose from {allowed}")
        return tuple(p for p in allowed if p in chosen)

    for name in (
        "events",
        "concurrency",
        "partitions",
        "rounds",
        "soak_events",
        "wrk_seconds",
        "batch_size",
        "batch_cost_ms",
        "batch_paced_rate",
        "workers",
    ):
        if getattr(args, name) <= 0:
            sys.exit(f"--{name.replace('_', '-')} must be positive")
    routers = subset(args.routers, ROUTERS, "--routers")
    if "direct-wrk" in routers and shutil.which("wrk") is None:
        progress("wrk is not installed (Debian package wrk): the wrk load is left out")
        routers = tuple(r for r in routers if r != "direct-wrk")
    for setting in args.logistik_set:
        if "=" not in setting:
            sys.exit(f"--logistik-set {setting}: write KEY=VALUE, e.g. log_level=warning")
    return Params(
        events=args.events,
        concurrency=args.concurrency,
        partitions=args.partitions,
        rounds=args.rounds,
        phases=subset(args.phases, PHASES, "--phases"),
        routers=routers,
        client=choose_client(args.client),
        wrk_seconds=args.wrk_seconds,
        paced_rate=args.paced_rate,
        paced_seconds=args.paced_seconds,
        paced_warm_up_s=args.paced_warm_up_s,
        groups=tuple(int(g) for g in args.groups.split(",") if g.strip()),
        slow_delay_s=args.slow_delay_s,
        slow_seconds=args.slow_seconds,
        soak_events=args.soak_events,
        soak_rate=args.soak_rate,
        batch_size=args.batch_size,
        batch_cost_ms=args.batch_cost_ms,
        batch_paced_rate=args.batch_paced_rate,
        logistik_settings=tuple(args.logistik_set),
        workers=args.workers,
        broker=args.broker,
    )


def main() -> None:
    """Run the benchmark and print its tables, or print the tables of a report."""
    args = parse_args()
    if args.markdown:
        try:
            print(markdown(orjson.loads(Path(args.markdown).read_bytes())))
        except (OSError, orjson.JSONDecodeError, KeyError) as exc:
            sys.exit(f"--markdown: cannot read the report {args.markdown}: {exc!r}")
        return
    params = params_from(args)
    host = machine()  # its load average is the one at the start
    measurements: list[Measurement] = []

    def record(result: Measurement) -> None:
        measurements.append(result)
        if args.report:  # written after each measurement: a failed run keeps what it measured
            report = build_report(params, measurements, host)
            Path(args.report).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))

    failure = None
    try:
        asyncio.run(run(params, record))
    except BenchError as exc:
        failure = f"benchmark failed: {exc}"
    except (KeyboardInterrupt, asyncio.CancelledError):
        failure = "benchmark interrupted; every process it started is stopped"
    if measurements:
        print(markdown(build_report(params, measurements, host)))
    if failure:
        sys.exit(failure)


if __name__ == "__main__":
    main()

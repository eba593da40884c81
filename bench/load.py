"""The benchmark's load generators, each run by bench/benchmark.py as a process of its own.

    python bench/load.py produce --servers HOST:PORT --topic T --prefix P --count N
                                 [--rate R] [--seed K] --times FILE
    python bench/load.py http --url URL --client NAME --count N --concurrency C
                              [--rate R] [--seed K]

`produce` sends events to Kafka as fast as the broker takes them, or at `--rate` per second,
and writes each event's send time (epoch seconds, one native double per event, in order) to
`--times`. `http` calls the model directly with one of bench/http_clients.py's clients, at most
`--concurrency` calls in flight (and at `--rate` per second when given), after a warm-up that
opens every connection. Each prints one JSON line: how many, how long, the CPU it used while
sending (time.process_time: every thread of the process), and for `http` the latency
percentiles of the calls.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from benchkit import EventMaker, event_id, new_event_loop, percentiles
from http_clients import CALL_TIMEOUT_S, CLIENTS, Caller, drive

FLUSH_TIMEOUT_S = 60.0
PACE_SLEEP_MIN_S = 0.0005  # shorter waits are spun through: sleep() overshoots them


def produce(
    servers: str, topic: str, prefix: str, count: int, rate: float | None, seed: int
) -> tuple[array[float], float]:
    """Produce `count` events; their send times and the CPU seconds the sending took."""
    producer = Producer(
        {"bootstrap.servers": servers, "linger.ms": 2, "acks": "all", "log_level": 4}
    )
    maker = EventMaker(seed)
    sent = array("d", bytes(8 * count))
    cpu_started = time.process_time()
    started = time.time()
    for index in range(count):
        key, body = maker.make(event_id(prefix, index), index)
        if rate is not None:
            wait_s = started + index / rate - time.time()
            if wait_s > PACE_SLEEP_MIN_S:
                producer.poll(0)
                time.sleep(wait_s)
        sent[index] = time.time()
        while True:
            try:
                producer.produce(topic, body, key)
                break
            except BufferError:  # librdkafka's queue is full: serve deliveries, then retry
                producer.poll(0.01)
        if index % 1000 == 0:
            producer.poll(0)
    left = producer.flush(FLUSH_TIMEOUT_S)
    if left:
        raise SystemExit(f"{left} event(s) not acknowledged within {FLUSH_TIMEOUT_S:g} s")
    return sent, time.process_time() - cpu_started


async def paced(
    caller: Caller, url: str, bodies: Sequence[bytes], concurrency: int, rate: float
) -> list[float]:
    """POST the bodies at `rate` per second, at most `concurrency` in flight; latencies in ms."""
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    tasks = []

    async def one(body: bytes) -> None:
        started = time.perf_counter()
        async with slots:
            status, _ = await caller.post(url, body, CALL_TIMEOUT_S)
        if status != 200:
            raise SystemExit(f"the model answered HTTP {status}")
        latencies.append((time.perf_counter() - started) * 1000)

    start = loop.time()
    for index, body in enumerate(bodies):
        wait_s = start + index / rate - loop.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        tasks.append(asyncio.create_task(one(body)))
    await asyncio.gather(*tasks)
    return latencies


async def http_load(args: argparse.Namespace) -> dict[str, Any]:
    """Warm the client up, then call the model with every event; the figures of the calls."""
    maker = EventMaker(args.seed)
    bodies = [maker.make(event_id("direct", i), i)[1] for i in range(args.count)]
    async with CLIENTS[args.client](args.concurrency) as caller:
        await drive(caller, [args.url], bodies[: args.concurrency * 4], args.concurrency)
        cpu_started, started = time.process_time(), time.perf_counter()
        if args.rate:
            latencies = await paced(caller, args.url, bodies, args.concurrency, args.rate)
        else:
            latencies = await drive(caller, [args.url], bodies, args.concurrency)
        seconds = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
    return {
        "count": args.count,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "latency_ms": percentiles(latencies),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    modes = parser.add_subparsers(dest="mode", required=True)
    kafka = modes.add_parser("produce", help="send events to a Kafka topic")
    kafka.add_argument("--servers", required=True)
    kafka.add_argument("--topic", required=True)
    kafka.add_argument("--prefix", required=True, help="event ids are PREFIX-INDEX")
    kafka.add_argument("--times", required=True, help="file for the send times")
    http = modes.add_parser("http", help="call the model directly")
    http.add_argument("--url", required=True)
    http.add_argument("--client", choices=tuple(CLIENTS), default="aiohttp")
    http.add_argument("--concurrency", type=int, default=64)
    for mode in (kafka, http):
        mode.add_argument("--count", type=int, required=True)
        mode.add_argument("--rate", type=float, help="events per second (default: at once)")
        mode.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def main() -> None:
    """Run one load and print its figures as a JSON line."""
    args = parse_args()
    if args.mode == "produce":
        sent, cpu_s = produce(
            args.servers, args.topic, args.prefix, args.count, args.rate, args.seed
        )
        Path(args.times).write_bytes(sent.tobytes())
        result = {
            "count": args.count,
            "seconds": sent[-1] - sent[0] if args.count else 0.0,
            "cpu_s": cpu_s,
        }
    else:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            result = runner.run(http_load(args))
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()

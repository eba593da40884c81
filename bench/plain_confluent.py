"""A plain consume → call → produce → commit loop on confluent-kafka (librdkafka) + aiohttp.

    python bench/plain_confluent.py --bootstrap HOST:PORT --topic T --group G
                                    (--url URL | --no-call) --results R
                                    [--concurrency 64] [--loop uvloop|asyncio]

The benchmark's second reference for logistik: the consumer's blocking calls on one thread,
one batch of records at a time, each POSTed to the model with at most `--concurrency` calls in
flight, each answer produced to `--results` keyed by the actor id, then a flush (the broker has
every answer of the batch) and one commit. The producer asks for the same delivery guarantees
as logistik's (acks from all replicas, idempotence, 2 ms linger). Anything but an HTTP 200 stops
it with an error. Runs until SIGTERM or SIGINT.

With `--no-call` the loop makes each answer itself, the one the benchmark's model would give,
and calls nothing: Kafka alone, the most any router on this path can move on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer

from model_server import labelled

MAX_RECORDS = 500
HEADERS = {"Content-Type": "application/json"}
FLUSH_TIMEOUT_S = 10.0


def poll(consumer: Consumer) -> list[Message]:
    """One batch of records (none after 100 ms without any); a consumer error stops the loop."""
    first = consumer.poll(0.1)
    if first is None:
        return []
    batch = [first, *consumer.consume(MAX_RECORDS - 1, 0)]
    for message in batch:
        error = message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            raise RuntimeError(f"consumer: {error.str()}")
    return [m for m in batch if m.error() is None]


def produce(producer: Producer, topic: str, value: bytes, key: bytes | None) -> None:
    """Produce one record, waiting for room when librdkafka's queue is full."""
    while True:
        try:
            producer.produce(topic, value, key)
            break
        except BufferError:
            producer.poll(0.01)
    producer.poll(0)


async def route(args: argparse.Namespace) -> None:
    """Route batches until stopped."""
    common = {"bootstrap.servers": args.bootstrap, "log_level": 4}
    consumer = Consumer(
        {
            **common,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,
        }
    )
    producer = Producer({**common, "linger.ms": 2, "acks": "all", "enable.idempotence": True})
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="consumer")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(thread, consumer.subscribe, [args.topic])
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def handle(message: Message) -> None:
                value = message.value() or b""
                event = orjson.loads(value)
                if args.url is None:
                    answer = orjson.dumps(labelled(event))
                else:
                    async with http.post(args.url, data=value, headers=HEADERS) as response:
                        answer = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"the model answered HTTP {response.status}")
                actor = event.get("actor") or {}
                key = str(actor["id"]).encode() if actor.get("id") else None
                produce(producer, args.results, answer, key)

            async def work_through(pending: Iterator[Message]) -> None:
                for message in pending:
                    await handle(message)

            while True:
                batch = await loop.run_in_executor(thread, poll, consumer)
                if not batch:
                    continue
                pending = iter(batch)
                workers = min(args.concurrency, len(batch))
                await asyncio.gather(*(work_through(pending) for _ in range(workers)))
                left = await asyncio.to_thread(producer.flush, FLUSH_TIMEOUT_S)
                if left:
                    raise RuntimeError(f"{left} answer(s) not acknowledged")
                await loop.run_in_executor(thread, lambda: consumer.commit(asynchronous=True))
    finally:
        await loop.run_in_executor(thread, consumer.close)
        thread.shutdown()


async def main(args: argparse.Namespace) -> None:
    """Route until SIGTERM or SIGINT."""
    task = asyncio.create_task(route(args))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def cli() -> None:
    """Parse the command line and run the loop on the chosen event loop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--url", help="the model's URL")
    model.add_argument(
        "--no-call",
        action="store_true",
        help="make each answer in the loop and call no model (Kafka alone)",
    )
    parser.add_argument("--results", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()

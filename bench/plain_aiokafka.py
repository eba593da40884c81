"""A plain consume → call → produce → commit loop, as most people write it: aiokafka + aiohttp.

    python bench/plain_aiokafka.py --bootstrap HOST:PORT --topic T --group G --url URL
                                   --results R [--concurrency 64] [--loop uvloop|asyncio]

The benchmark's reference for logistik: one batch of records at a time, each POSTed to the
model with at most `--concurrency` calls in flight, each answer produced to `--results` keyed
by the actor id, then, once the broker has every answer of the batch, one commit. The producer
waits for acks from all replicas, as logistik's does; it is not idempotent as logistik's is,
because Tansu refuses aiokafka's InitProducerId request. Anything but an HTTP 200 stops it
with an error. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

MAX_RECORDS = 500
HEADERS = {"Content-Type": "application/json"}


async def route(args: argparse.Namespace) -> None:
    """Route batches until stopped."""
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=2)
    await consumer.start()
    await producer.start()
    slots = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def handle(record: ConsumerRecord[bytes, bytes]) -> asyncio.Future[object]:
                async with slots, http.post(args.url, data=record.value, headers=HEADERS) as r:
                    answer = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"the model answered HTTP {r.status}: {answer[:200]!r}")
                actor = orjson.loads(record.value or b"{}").get("actor") or {}
                key = str(actor["id"]).encode() if actor.get("id") else None
                delivered: asyncio.Future[object] = await producer.send(
                    args.results, answer, key=key
                )
                return delivered

            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=MAX_RECORDS)
                records = [record for batch in batches.values() for record in batch]
                if not records:
                    continue
                deliveries = await asyncio.gather(*(handle(record) for record in records))
                await asyncio.gather(*deliveries)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


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
    parser.add_argument("--url", required=True)
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

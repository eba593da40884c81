"""Producing to Kafka: the router's awaitable producer, and handing records to librdkafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from logistik.config import KafkaConfig
from logistik.errors import PublishError
from logistik.kafka.settings import producer_config
from logistik.protocol import HeaderValue

# A record's headers as librdkafka's produce takes them: a list, not any sequence.
Headers = list[tuple[str, HeaderValue]]
OnDelivery = Callable[[KafkaError | None, Message], None]


def write_error(topic: str, error: KafkaError) -> PublishError:
    """The error for a record that librdkafka or the broker would not take."""
    return PublishError(f"cannot write to topic '{topic}': {error.str()}")


def try_produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Headers | None = None,
    on_delivery: OnDelivery | None = None,
) -> bool:
    """Hand one record to librdkafka; False when its queue is full (serve reports, try again)."""
    try:
        producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
    except BufferError:
        return False
    except KafkaException as exc:
        raise write_error(topic, exc.args[0]) from None
    return True


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Headers | None = None,
    on_delivery: OnDelivery | None = None,
    full_wait_s: float = 0.1,
) -> None:
    """Hand one record to librdkafka, serving delivery reports while its queue is full."""
    while not try_produce(producer, topic, value, key, headers, on_delivery):
        producer.poll(full_wait_s)  # acknowledgements make room
    producer.poll(0)


class EventProducer:
    """An idempotent producer whose `send` resolves when the broker has the record.

    Delivery reports are served on the event loop's own thread by a poll timer that runs
    every `busy_poll_s` while records await their acknowledgement (and every `idle_poll_s`
    otherwise, for librdkafka's logs and errors). A poller thread would have to take the
    GIL once per report from a busy event loop, which costs far more than the report.
    """

    def __init__(
        self, kafka: KafkaConfig, busy_poll_s: float = 0.001, idle_poll_s: float = 0.5
    ) -> None:
        self._producer = Producer(producer_config(kafka))
        self._busy_poll_s = busy_poll_s
        self._idle_poll_s = idle_poll_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # whether the timer runs at the busy rate

    def start(self) -> None:
        """Start serving delivery reports on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._schedule(busy=False)

    def _schedule(self, busy: bool) -> None:
        assert self._loop is not None
        self._busy = busy
        delay_s = self._busy_poll_s if busy else self._idle_poll_s
        self._timer = self._loop.call_later(delay_s, self._poll)

    def _poll(self) -> None:
        self._producer.poll(0)
        # librdkafka's count: records not yet acknowledged, and reports not yet served.
        self._schedule(busy=len(self._producer) > 0)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Write one record and wait until the broker acknowledges it."""
        loop = self._loop
        assert loop is not None, "EventProducer.start() not called"
        future: asyncio.Future[None] = loop.create_future()
        delivered = partial(self._delivered, future, topic)
        # librdkafka's queue is full: the busy timer serves deliveries meanwhile. Nothing
        # signals that there is room again, so the wait is a poll.
        while not try_produce(self._producer, topic, value, key, headers, delivered):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if not self._busy:
            assert self._timer is not None
            self._timer.cancel()
            self._schedule(busy=True)
        await future

    def _delivered(
        self, future: asyncio.Future[None], topic: str, err: KafkaError | None, msg: Message
    ) -> None:
        # Called by poll() on the event loop's thread: the future can be settled directly.
        if future.done():
            return
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(write_error(topic, err))

    async def flush(self, timeout_s: float) -> int:
        """Wait for outstanding records; returns how many are still undelivered."""
        deadline = time.monotonic() + timeout_s
        while len(self._producer) and time.monotonic() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(self._busy_poll_s)
        self._producer.poll(0)
        return len(self._producer)

    def close(self) -> None:
        """Stop serving delivery reports."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

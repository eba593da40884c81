"""Producing to Kafka: the router's awaitable producer, and handing records to librdkafka."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from logistik.config import KafkaConfig
from logistik.errors import BrokerError, PublishError
from logistik.kafka.settings import producer_config
from logistik.protocol import HeaderValue

logger = logging.getLogger(__name__)

# A record's headers as librdkafka's produce takes them: a list, not any sequence.
Headers = list[tuple[str, HeaderValue]]
OnDelivery = Callable[[KafkaError | None, Message], None]

# Refusals that can pass: the broker is away, moving leaders, or short of replicas.
TRANSIENT = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._QUEUE_FULL,
        KafkaError._STATE,
        KafkaError._NODE_UPDATE,
        KafkaError._INTR,
        KafkaError._DESTROY,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.THROTTLING_QUOTA_EXCEEDED,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
    }
)
# Errors of the idempotent producer's own state (after a broker lost it, typically): the
# producer cannot go on, a new one can. Purges are what a replaced producer reports.
PRODUCER_STATE = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._INCONSISTENT,
        KafkaError._GAPLESS_GUARANTEE,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.PRODUCER_FENCED,
    }
)
TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
# More fatal errors than this within the window and the producer is given up for good.
MAX_RECOVERIES = 5
RECOVERY_WINDOW_S = 300.0
LOG_INTERVAL_S = 60.0


def write_error(topic: str, error: KafkaError) -> PublishError:
    """The error for a record that librdkafka or the broker would not take."""
    code = error.code()
    permanent = not (error.retriable() or code in TRANSIENT or code in PRODUCER_STATE)
    return PublishError(
        f"cannot write to topic '{topic}': {error.str()}",
        permanent=permanent,
        too_large=code in TOO_LARGE,
    )


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


def is_fatal(error: KafkaError) -> bool:
    """Whether an error means the producer itself cannot go on."""
    return error.fatal() or error.code() == KafkaError._FATAL


@dataclass(eq=False, slots=True)
class _Outgoing:
    """One record from `send` until the broker acknowledges it (or refuses it for good)."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: Headers | None
    future: asyncio.Future[None]
    solo: bool = False  # refused as too large in a batch: sent again in a batch of its own


class EventProducer:
    """An idempotent producer whose `send` resolves when the broker has the record.

    Delivery reports are served on the event loop's own thread by a poll timer that runs
    every `busy_poll_s` while records await their acknowledgement (and every `idle_poll_s`
    otherwise, for librdkafka's logs and errors). A poller thread would have to take the
    GIL once per report from a busy event loop, which costs far more than the report.

    A fatal error (the idempotent producer's state lost by a restarted broker, say) replaces
    the librdkafka producer with a new one that sends again every record not acknowledged:
    at least once allows a duplicate, never a loss. Too many fatal errors in a row and the
    producer gives up: `watch()` then raises, which stops the process.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        busy_poll_s: float = 0.001,
        idle_poll_s: float = 0.5,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self._config = {**producer_config(kafka), **(settings or {})}
        self._generation = 0  # bumped by every replacement; older reports are ignored
        self._main = self._new_producer(self._config)
        # Built on the first record refused as too large: a batch is refused as a whole, so
        # the records batched with a large one are sent again one per batch to know.
        self._solo: Producer | None = None
        self._pending: dict[int, _Outgoing] = {}  # not yet acknowledged, in send order
        self._backlog: deque[_Outgoing] = deque()  # not yet handed to librdkafka
        self._busy_poll_s = busy_poll_s
        self._idle_poll_s = idle_poll_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # whether the timer runs at the busy rate
        self._recoveries: deque[float] = deque()
        self._recovering: str | None = None  # why the producer was replaced, until it delivers
        self._failure: str | None = None  # why the producer gave up
        self._gone: asyncio.Event | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._poll_failed_at = -LOG_INTERVAL_S
        self.recovered = 0  # how often the producer was replaced

    def _new_producer(self, config: dict[str, Any]) -> Producer:
        """A librdkafka producer of the current generation."""
        return Producer({**config, "error_cb": partial(self._on_error, self._generation)})

    def start(self) -> None:
        """Start serving delivery reports on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._gone = asyncio.Event()
        self._schedule(busy=False)

    @property
    def client(self) -> Producer:
        """The librdkafka producer in use now."""
        return self._main

    def state(self) -> tuple[str, str]:
        """("ok" | "recovering" | "failed", a one-line detail)."""
        if self._failure is not None:
            return "failed", self._failure
        if self._recovering is not None:
            return "recovering", self._recovering
        return "ok", f"{len(self._pending)} record(s) awaiting acknowledgement"

    async def watch(self) -> None:
        """Wait until the producer gives up for good, then raise BrokerError saying why."""
        assert self._gone is not None, "EventProducer.start() not called"
        await self._gone.wait()
        raise BrokerError(f"the Kafka producer cannot recover: {self._failure}")

    def _schedule(self, busy: bool) -> None:
        assert self._loop is not None
        self._busy = busy
        delay_s = self._busy_poll_s if busy else self._idle_poll_s
        self._timer = self._loop.call_later(delay_s, self._poll)

    def _poll(self) -> None:
        # Whatever happens here, the timer goes on: without it no record is ever acknowledged.
        try:
            self._poll_now()
        except Exception:
            now = time.monotonic()
            if now - self._poll_failed_at >= LOG_INTERVAL_S:
                self._poll_failed_at = now
                logger.exception("serving the Kafka producer's delivery reports failed")
        finally:
            self._schedule(busy=bool(self._pending))

    def _poll_now(self) -> None:
        """Serve the producers' delivery reports and errors, then hand waiting records on."""
        self._serve(self._main)
        if self._solo is not None:
            self._serve(self._solo)
        self._hand_backlog()
        if not self._pending:
            self._recovering = None  # nothing left to send again: the new producer has it all

    def _serve(self, producer: Producer) -> None:
        """Serve one current producer's delivery reports and errors."""
        generation = self._generation
        try:
            producer.poll(0)
        except KafkaException as exc:
            error = exc.args[0]
            if is_fatal(error):
                self._recover(error.str(), generation)
            else:
                logger.warning("Kafka producer: %s", error.str())

    def _on_error(self, generation: int, error: KafkaError) -> None:
        # Called by poll(): on the event loop's thread unless the producer was replaced.
        if is_fatal(error):
            self._recover(error.str(), generation)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Write one record and wait until the broker acknowledges it."""
        await self.submit(topic, value, key, headers)

    def submit(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[None]:
        """Hand one record on now; the future resolves when the broker acknowledges it.

        PublishError (raised, or set on the future) when the record cannot be written.
        """
        loop = self._loop
        assert loop is not None, "EventProducer.start() not called"
        if self._failure is not None:
            raise PublishError(f"cannot write to topic '{topic}': {self._failure}")
        record = _Outgoing(topic, value, key, headers, loop.create_future())
        self._pending[id(record)] = record
        self._backlog.append(record)
        self._hand_backlog()
        if not self._busy:
            assert self._timer is not None
            self._timer.cancel()
            self._schedule(busy=True)
        return record.future

    def _hand_backlog(self) -> None:
        """Hand waiting records to librdkafka, in order, until its queue is full."""
        while self._backlog and self._failure is None:
            record = self._backlog[0]
            producer = self._solo_producer() if record.solo else self._main
            generation = self._generation
            try:
                producer.produce(
                    record.topic,
                    record.value,
                    record.key,
                    headers=record.headers,
                    on_delivery=partial(self._delivered, record, generation),
                )
            except BufferError:
                return  # the timer serves acknowledgements, which make room
            except KafkaException as exc:
                error = exc.args[0]
                if is_fatal(error):
                    # produce() only says "fatal error"; the next poll raises the cause.
                    reason = _fatal_cause(producer, error)
                    self._recover(reason, generation)
                    continue
                self._backlog.popleft()
                self._settle(record, write_error(record.topic, error))
                continue
            self._backlog.popleft()

    def _solo_producer(self) -> Producer:
        if self._solo is None:
            self._solo = self._new_producer({**self._config, "batch.num.messages": 1})
        return self._solo

    def _delivered(
        self, record: _Outgoing, generation: int, err: KafkaError | None, msg: Message
    ) -> None:
        # Called by poll() on the event loop's thread (or by a replaced producer's last poll
        # on another thread, whose reports are ignored: its records were sent again).
        if generation != self._generation:
            return
        if err is None:
            self._recovering = None
            self._settle(record, None)
        elif err.code() in PRODUCER_STATE or is_fatal(err):
            self._recover(err.str(), generation)
        elif err.code() in TOO_LARGE and not record.solo:
            record.solo = True
            self._backlog.append(record)
        else:
            self._settle(record, write_error(record.topic, err))

    def _settle(self, record: _Outgoing, error: PublishError | None) -> None:
        self._pending.pop(id(record), None)
        if record.future.done():
            return
        if error is None:
            record.future.set_result(None)
        else:
            record.future.set_exception(error)

    def _recover(self, reason: str, generation: int) -> None:
        """Replace the producer after a fatal error and send again what was not acknowledged.

        `generation` is that of the producer that failed: one replaced already is not again.
        """
        if generation != self._generation:
            return
        now = time.monotonic()
        recoveries = self._recoveries
        while recoveries and now - recoveries[0] > RECOVERY_WINDOW_S:
            recoveries.popleft()
        if self._failure is not None:
            return
        if len(recoveries) >= MAX_RECOVERIES:
            self._give_up(
                f"{len(recoveries) + 1} fatal errors within {RECOVERY_WINDOW_S:g} s; last: {reason}"
            )
            return
        old = [p for p in (self._main, self._solo) if p is not None]
        self._generation += 1
        try:
            main = self._new_producer(self._config)
        except KafkaException as exc:
            self._give_up(f"{reason}; a new producer cannot be built: {exc.args[0].str()}")
            return
        recoveries.append(now)
        self._main, self._solo = main, None
        self.recovered += 1
        waiting = list(self._pending.values())
        self._backlog = deque(waiting)
        self._recovering = f"replaced after a fatal error ({reason}); re-sending"
        logger.error(
            "Kafka producer failed (%s): replaced by a new one, sending again %d record(s) not "
            "yet acknowledged",
            reason,
            len(waiting),
        )
        for producer in old:
            self._retire(producer)

    def _retire(self, producer: Producer) -> None:
        """Drop a replaced producer's records and close it, off the event loop."""
        task = asyncio.ensure_future(asyncio.to_thread(_close_quietly, producer))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _give_up(self, reason: str) -> None:
        self._failure = reason
        self._recovering = None
        logger.critical("Kafka producer cannot recover: %s", reason)
        if self._gone is not None:
            self._gone.set()

    async def flush(self, timeout_s: float) -> int:
        """Wait for outstanding records; returns how many are still undelivered."""
        deadline = time.monotonic() + timeout_s
        while self._pending and self._failure is None and time.monotonic() < deadline:
            self._poll_now()
            await asyncio.sleep(self._busy_poll_s)
        self._poll_now()
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=max(0.0, deadline - time.monotonic()))
        return len(self._pending)

    def close(self) -> None:
        """Stop serving delivery reports and release the librdkafka producers (their threads).

        Called after `flush`: a record not acknowledged by then is dropped, its event left
        uncommitted for the next consumer. A send after this fails with PublishError.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._failure is None:
            self._failure = "the producer is closed"
        for producer in (self._main, self._solo):
            if producer is not None:
                _close_quietly(producer)


def _fatal_cause(producer: Producer, error: KafkaError) -> str:
    """What made a producer fatal, as its next poll says (its reports are served meanwhile)."""
    try:
        producer.poll(0)
    except KafkaException as exc:
        return str(exc.args[0].str())
    return str(error.str())


def _close_quietly(producer: Producer) -> None:
    """Purge a replaced producer's records (they were sent again) and close it."""
    with contextlib.suppress(KafkaException, RuntimeError):
        producer.purge()
        producer.poll(0)
        producer.close()

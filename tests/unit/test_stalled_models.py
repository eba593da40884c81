"""A model that stops answering gives up its queue while the in-flight budget is full, when
(and only when) a model that was answering sits idle for want of that budget."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from logistik.answer import Answer, Outcome
from logistik.config import RoutingConfig
from logistik.handler import Handler
from logistik.protocol import MAX_BUNDLE_EVENTS, Header, retry_topic
from logistik.routing.registry import LiveHandler, Registry
from logistik.routing.router import Router, Source
from logistik.routing.slots import Slots
from tests.support.models import wait_until_async
from tests.unit.test_router import MemoryTopics, event, handler

STALL_S = 0.5  # a window a loaded machine's pauses (tens of ms) cannot span


@dataclass
class GatedModels:
    """Models that answer at once, except those named in `held`, which answer once released."""

    held: set[str]
    released: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)
    holding: deque[asyncio.Future[None]] = field(default_factory=deque)

    async def call(
        self, handler: Handler, body: bytes, timeout_s: float, headers: dict[str, str] | None = None
    ) -> Answer:
        self.calls.append(handler.name)
        if handler.name in self.held and not self.released.is_set():
            one: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.holding.append(one)
            everyone: asyncio.Future[Any] = asyncio.ensure_future(self.released.wait())
            await asyncio.wait({one, everyone}, return_when=asyncio.FIRST_COMPLETED)
            everyone.cancel()
        return Answer(Outcome.OK, 200, body=orjson.dumps({"by": handler.name}))

    def let_one(self) -> None:
        """Let the longest-held call answer, the others still held."""
        self.holding.popleft().set_result(None)


def routed(
    handlers: list[Handler], held: set[str], max_queue_wait_s: float = 60
) -> tuple[Router, Registry, GatedModels, MemoryTopics]:
    registry = Registry(max_concurrency=2)
    registry.replace(handlers)
    models, topics = GatedModels(held), MemoryTopics()
    routing = RoutingConfig(
        stalled_after_s=STALL_S,
        max_queue_wait_s=max_queue_wait_s,
        backoff_base_s=0,
        backoff_cap_s=0,
    )
    return Router(registry, models, topics, routing), registry, models, topics


def live(registry: Registry, name: str) -> LiveHandler:
    instance = registry.instance(f"{name}-127.0.0.1-model-0")
    assert instance is not None
    return instance


@contextmanager
def routing(
    router: Router, count: int, topic: str = "detect"
) -> Iterator[list[asyncio.Task[None]]]:
    """`count` events routed as the consume loop does, each a task; cancelled at the end."""
    tasks = [
        asyncio.create_task(router.handle(Source(topic, 0, n), event(id=f"e{n}")))
        for n in range(count)
    ]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()


async def stalled_for(instance: LiveHandler, waiting: int) -> None:
    """Until `waiting` calls have queued for the instance for longer than the stall window."""
    await wait_until_async(
        lambda: (
            instance.slots.waiting == waiting
            and instance.slots.oldest_wait_s(time.monotonic()) > STALL_S
        ),
        5,
        f"{waiting} calls queued for {instance.node_id} past the stall window",
    )


async def test_a_stalled_model_beside_an_idle_one_sends_its_queue_to_the_retry_topic() -> None:
    router, registry, models, topics = routed([handler("hang"), handler("fast")], {"hang"})
    hang, fast = live(registry, "hang"), live(registry, "fast")
    with routing(router, 6) as tasks:
        await wait_until_async(lambda: len(topics.on("fast-results")) == 6, 5, "fast answers")
        await stalled_for(hang, 4)
        assert fast.slots.free
        assert router.relieve() == 4
        # The four queued events are done for the hanging group without a call: each waits
        # on its retry topic; the two calls under way go on.
        await wait_until_async(lambda: sum(t.done() for t in tasks) == 4, 5, "four events done")
        retries = topics.held(retry_topic("detect", "hang"))
        assert len(retries) == 4
        assert all("is busy" in r.headers[Header.ERROR] for _, _, r in retries)
        assert models.calls.count("hang") == 2
        # New events of the stalled model go to the retry topic too, without queueing.
        with routing(router, 1, "detect") as more:
            await asyncio.wait_for(asyncio.gather(*more), 5)
        assert len(topics.held(retry_topic("detect", "hang"))) == 5
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(topics.on("hang-results")) == 2


async def test_a_model_held_back_since_the_budget_filled_counts_however_late_the_check() -> None:
    # The loop may turn late (a paused process, a slow poll): the fast model's last answer is
    # then past the idle window, yet it has had nothing to answer since the budget filled.
    router, registry, models, topics = routed([handler("hang"), handler("fast")], {"hang"})
    hang, fast = live(registry, "hang"), live(registry, "fast")
    with routing(router, 6) as tasks:
        await wait_until_async(lambda: len(topics.on("fast-results")) == 6, 5, "fast answers")
        await stalled_for(hang, 4)
        # Its last answer five seconds ago, and the budget full since just after it.
        fast.slots.last_release_s -= 5
        filled_s = fast.slots.last_release_s + 0.01
        assert router.relieve() == 0  # no anchor: an idle model that answered long ago
        assert router.relieve(full_since_s=filled_s) == 4
        await wait_until_async(lambda: sum(t.done() for t in tasks) == 4, 5, "four events done")
        assert len(topics.held(retry_topic("detect", "hang"))) == 4
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def test_a_model_alone_keeps_its_queue_however_long_it_stalls() -> None:
    router, registry, models, topics = routed([handler("hang")], {"hang"})
    hang = live(registry, "hang")
    with routing(router, 6) as tasks:
        await stalled_for(hang, 4)
        assert router.relieve() == 0
        assert hang.slots.waiting == 4
        assert topics.records == []
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(topics.on("hang-results")) == 6


async def test_models_that_all_stall_keep_their_queues() -> None:
    handlers = [handler("hang"), handler("slow")]
    router, registry, models, topics = routed(handlers, {"hang", "slow"})
    with routing(router, 6) as tasks:
        await stalled_for(live(registry, "hang"), 4)
        await stalled_for(live(registry, "slow"), 4)
        assert router.relieve() == 0
        assert topics.records == []
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(topics.on("hang-results")) == len(topics.on("slow-results")) == 6


async def test_an_idle_model_that_has_never_answered_does_not_count_as_held_back() -> None:
    # "elsewhere" reads another topic and has had no event: nothing of it waits on the budget.
    handlers = [handler("hang"), handler("elsewhere", event="other")]
    router, registry, models, topics = routed(handlers, {"hang"})
    with routing(router, 6) as tasks:
        await stalled_for(live(registry, "hang"), 4)
        assert live(registry, "elsewhere").slots.free
        assert router.relieve() == 0
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(topics.on("hang-results")) == 6


async def test_a_model_answering_slowly_but_steadily_is_not_stalled() -> None:
    router, registry, models, topics = routed([handler("hang"), handler("fast")], {"hang"})
    hang = live(registry, "hang")
    with routing(router, 6) as tasks:
        await wait_until_async(lambda: len(topics.on("fast-results")) == 6, 5, "fast answers")
        await stalled_for(hang, 4)
        # One call ends: the queue has waited past the window, but the model just answered.
        models.let_one()
        await wait_until_async(lambda: hang.slots.waiting == 3, 5, "one answer, one call in")
        assert hang.slots.oldest_wait_s(time.monotonic()) > STALL_S
        assert router.relieve() == 0
        assert hang.slots.waiting == 3
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(topics.on("hang-results")) == 6
    assert topics.on(retry_topic("detect", "hang")) == []


async def test_shed_ends_limited_waits_and_keeps_the_patient_ones_in_order() -> None:
    slots = Slots(1)
    assert await slots.acquire(0)  # this test holds the only slot
    limited = asyncio.create_task(slots.acquire(60))
    patient = asyncio.create_task(slots.acquire(None))
    limited_too = asyncio.create_task(slots.acquire(60))
    await wait_until_async(lambda: slots.waiting == 3, 5, "three waits")
    assert slots.shed() == 2
    assert await asyncio.wait_for(limited, 5) is False
    assert await asyncio.wait_for(limited_too, 5) is False
    assert not patient.done()
    assert slots.last_release_s == 0.0
    slots.release()
    assert await asyncio.wait_for(patient, 5) is True
    assert slots.last_release_s > 0
    slots.release()
    assert slots.free


async def test_a_long_queue_is_waited_in_when_it_holds_nobody_back() -> None:
    # Past max_queue_wait_s, a new event still queues: no other model waits for the budget.
    router, registry, models, topics = routed([handler("hang")], {"hang"}, max_queue_wait_s=0.01)
    hang = live(registry, "hang")
    with routing(router, 6) as tasks:
        await stalled_for(hang, 4)
        with routing(router, 1) as more:
            await wait_until_async(lambda: hang.slots.waiting == 5, 5, "the new event queued")
            assert topics.records == []
            models.released.set()
            await asyncio.wait_for(asyncio.gather(*tasks, *more), 5)
    assert len(topics.on("hang-results")) == 7


async def test_a_long_queue_beside_an_idle_model_sends_new_events_to_the_retry_topic() -> None:
    handlers = [handler("hang"), handler("fast")]
    router, registry, models, topics = routed(handlers, {"hang"}, max_queue_wait_s=0.01)
    hang = live(registry, "hang")
    with routing(router, 6) as tasks:
        await wait_until_async(lambda: len(topics.on("fast-results")) == 6, 5, "fast answers")
        await stalled_for(hang, 4)
        with routing(router, 1) as more:
            await asyncio.wait_for(asyncio.gather(*more), 5)
        assert hang.slots.waiting == 4
        [deferred] = topics.on(retry_topic("detect", "hang"))
        assert "is busy: 4 call(s) waiting" in deferred.headers[Header.ERROR]
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def test_a_queue_past_half_the_deadline_waits_on_while_its_model_answers() -> None:
    # Every model busy, this one answering steadily: the router is the limit, and the retry
    # topic would only add work. Its queued calls wait past half their 1 s deadline.
    router, registry, models, topics = routed([handler("busy", timeout_s=1)], {"busy"})
    busy = live(registry, "busy")
    started = time.monotonic()
    with routing(router, 30) as tasks:
        await wait_until_async(lambda: busy.slots.waiting == 28, 5, "28 calls queued")
        while not all(task.done() for task in tasks):
            if models.holding:
                models.let_one()
            await asyncio.sleep(0.05)  # the model's pace: one answer every 50 ms
        await asyncio.gather(*tasks)
    assert time.monotonic() - started > 0.5  # the last call waited past half its deadline
    assert len(topics.on("busy-results")) == 30
    assert topics.on(retry_topic("detect", "busy")) == []


async def test_a_queue_past_half_the_deadline_leaves_when_its_model_answers_nothing() -> None:
    router, _, models, topics = routed([handler("hang", timeout_s=0.2)], {"hang"})
    with routing(router, 6) as tasks:
        await wait_until_async(lambda: len(topics.held(retry_topic("detect", "hang"))) == 4, 5)
        assert all("is busy" in r.headers[Header.ERROR] for r in topics.records)
        assert len(models.holding) == 2
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(topics.on("hang-results")) == 2


def test_a_shed_groups_retry_topic_is_held_to_what_its_slots_can_start() -> None:
    registry = Registry(max_concurrency=64)
    registry.replace([handler("slow"), handler("fast")])
    router = Router(registry, GatedModels(set()), MemoryTopics(), RoutingConfig())
    assert router.retry_budget("detect", "slow", 2000) == 2000
    slow = live(registry, "slow")
    slow.shed_until = time.monotonic() + 60
    # Two events per slot: a call can start as each one ends, and no more waits in memory.
    assert router.retry_budget("detect", "slow", 2000) == 128
    assert router.retry_budget("detect", "slow", 50) == 50
    assert router.retry_budget("detect", "fast", 2000) == 2000
    assert router.retry_budget("detect", "gone", 2000) == 2000
    slow.shed_until = time.monotonic() - 1
    assert router.retry_budget("detect", "slow", 2000) == 2000


def test_a_shed_group_with_few_slots_still_takes_a_whole_bundle() -> None:
    router, registry, _, _ = routed([handler("slow")], set())
    live(registry, "slow").shed_until = time.monotonic() + 60
    assert router.retry_budget("detect", "slow", 2000) == MAX_BUNDLE_EVENTS


async def busy_and_answering(instance: LiveHandler) -> None:
    """Every slot of the instance taken, its last answer just now."""
    for _ in range(instance.max_concurrency):
        assert await instance.slots.acquire(None)
    assert not instance.slots.free
    instance.slots.last_release_s = time.monotonic()


async def test_a_silent_model_beside_one_that_answers_and_is_busy_gives_up_its_queue() -> None:
    # The fast model has no free slot, so nothing holds it back yet; but it answers, and it
    # will run dry while the silent model's queue keeps the budget: that queue leaves now.
    router, registry, models, topics = routed([handler("hang"), handler("fast")], {"hang"})
    hang, fast = live(registry, "hang"), live(registry, "fast")
    with routing(router, 6) as tasks:
        await wait_until_async(lambda: len(topics.on("fast-results")) == 6, 5, "fast answers")
        await stalled_for(hang, 4)
        await busy_and_answering(fast)
        assert router.relieve() == 4
        await wait_until_async(lambda: sum(t.done() for t in tasks) == 4, 5, "four events done")
        assert len(topics.held(retry_topic("detect", "hang"))) == 4
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(topics.on("hang-results")) == 2


async def test_a_slow_model_that_answers_keeps_its_queue_while_the_others_are_busy() -> None:
    router, registry, models, topics = routed([handler("hang"), handler("fast")], {"hang"})
    hang, fast = live(registry, "hang"), live(registry, "fast")
    with routing(router, 6) as tasks:
        await wait_until_async(lambda: len(topics.on("fast-results")) == 6, 5, "fast answers")
        await stalled_for(hang, 4)
        await busy_and_answering(fast)
        # Its queue is long but it answers (not silent): every model is busy, it keeps it.
        hang.slots.last_release_s = time.monotonic()
        assert router.relieve() == 0
        assert hang.slots.waiting == 4
        models.released.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(topics.on("hang-results")) == 6

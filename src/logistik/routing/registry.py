"""The live set of handlers, grouped by topic and group, with each instance's load and health."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from logistik.event import Event, channel_groups, event_id
from logistik.handler import Handler, ModelType
from logistik.routing.slots import Slots


class Circuit(StrEnum):
    """Whether a model instance is called: closed (yes), open (no), half-open (one probe)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(eq=False)
class LiveHandler:
    """Runtime state of one handler: calls in flight, latency, and its circuit breaker.

    After `open_after` calls in a row without an answer (timeouts, refused or broken
    connections) the circuit opens: the
    instance gets no calls for a cool-down that doubles at each failed probe, up to a cap;
    then one call probes it (half-open), and a success closes the circuit again.
    """

    handler: Handler
    max_concurrency: int
    in_flight: int = 0
    patient_waiting: int = 0  # calls from a retry topic waiting for a slot
    shed_until: float = 0.0  # monotonic time until which new events go to the retry topic
    consecutive_failures: int = 0
    unanswered: int = 0  # calls in a row that got no answer: they open the circuit
    circuit: Circuit = Circuit.CLOSED
    circuit_since: float = 0.0  # wall-clock time of the last change, for people to read
    open_until: float = 0.0  # monotonic time the next probe is allowed
    cooldown_s: float = 0.0
    last_error: str = ""
    slots: Slots = field(init=False)

    def __post_init__(self) -> None:
        self.slots = Slots(self.max_concurrency)

    @property
    def node_id(self) -> str:
        """The handler's node id."""
        return self.handler.node_id

    def probe_in_s(self, now: float, probe_s: float) -> float:
        """About when a call may go to this instance: now, after its cool-down, or once the
        probe under way (which takes up to `probe_s`) has told."""
        if self.circuit is Circuit.CLOSED:
            return 0.0
        if self.circuit is Circuit.HALF_OPEN:
            return probe_s
        return max(0.0, self.open_until - now)

    def callable(self, now: float) -> bool:
        """Whether a call may go to this instance now (an open circuit past its cool-down may)."""
        if self.circuit is Circuit.CLOSED:
            return True
        return self.circuit is Circuit.OPEN and now >= self.open_until

    def record_success(self) -> bool:
        """Clear the failure streak; True when this closed the circuit."""
        self.consecutive_failures = 0
        return self._answered()

    def record_failure(
        self, error: str, answered: bool, open_after: int, cooldown_s: float, cooldown_cap_s: float
    ) -> Circuit | None:
        """Count a failed call; returns the circuit's new state when it changed.

        Only calls that got no answer at all (timeouts, refused or broken connections) open
        the circuit: they are what costs the router, and a model that answers, even 5xx, is
        reachable; its answers steer the retries (Retry-After).
        """
        self.consecutive_failures += 1
        self.last_error = error
        if answered:
            return Circuit.CLOSED if self._answered() else None
        self.unanswered += 1
        if self.circuit is Circuit.OPEN:
            return None  # a call that started before the circuit opened: no news
        if self.circuit is Circuit.HALF_OPEN:  # the probe failed: a longer cool-down
            self.cooldown_s = min(cooldown_cap_s, max(cooldown_s, self.cooldown_s * 2))
            self.open_until = time.monotonic() + self.cooldown_s
            self.circuit = Circuit.OPEN
            return None
        if self.unanswered < open_after:
            return None
        self.cooldown_s = cooldown_s
        self.open_until = time.monotonic() + cooldown_s
        self.circuit, self.circuit_since = Circuit.OPEN, time.time()
        return Circuit.OPEN

    def _answered(self) -> bool:
        """The instance answered: its circuit closes; True when it was not closed."""
        self.unanswered = 0
        if self.circuit is Circuit.CLOSED:
            return False
        self.circuit, self.circuit_since, self.cooldown_s = Circuit.CLOSED, time.time(), 0.0
        return True

    def start_probe(self) -> None:
        """Let one call through an open circuit whose cool-down passed."""
        self.circuit = Circuit.HALF_OPEN

    def end_probe(self) -> None:
        """A probe that made no call: the circuit stays open, ready for the next probe."""
        if self.circuit is Circuit.HALF_OPEN:
            self.circuit = Circuit.OPEN


@dataclass(eq=False)
class Group:
    """One model in the user's sense: its production, canary and decoy instances for one topic."""

    group_id: str
    topic: str
    production: list[LiveHandler] = field(default_factory=list)
    canaries: list[LiveHandler] = field(default_factory=list)
    decoys: list[LiveHandler] = field(default_factory=list)
    down: list[str] = field(default_factory=list)  # node ids discovery reports not healthy
    _turn: int = 0

    @property
    def answerable(self) -> bool:
        """Whether any instance can answer (production or canary)."""
        return bool(self.production or self.canaries)

    def answering_pool(self, event: Event) -> list[LiveHandler]:
        """The instances that may answer this event: a canary for its share, else production."""
        serving = [c for c in self.canaries if c.handler.traffic > 0]
        if serving:
            share = sum(c.handler.traffic for c in serving)
            if canary_draw(self.group_id, event_id(event)) < share:
                return serving
        # Without production (all demoted or down), a standby canary answers rather than no one.
        return self.production or serving or self.canaries

    def pick(self, pool: list[LiveHandler], tried: Iterable[str] = ()) -> LiveHandler | None:
        """The least-loaded instance of the pool whose circuit lets a call through, preferring
        nodes not tried yet; None when every circuit is open."""
        now = time.monotonic()
        callable_ = [i for i in pool if i.callable(now)]
        if not callable_:
            return None
        tried_set = set(tried)
        candidates = [i for i in callable_ if i.node_id not in tried_set] or callable_
        count = len(candidates)
        if count == 1:
            best = candidates[0]
        else:
            self._turn += 1
            # Rotate the start so equal loads take turns instead of always the first instance.
            start = self._turn % count
            best = candidates[start]
            for offset in range(1, count):
                other = candidates[(start + offset) % count]
                if other.in_flight < best.in_flight:
                    best = other
        if best.circuit is not Circuit.CLOSED:
            best.start_probe()
        return best


def canary_draw(group_id: str, ident: str) -> float:
    """A stable number in [0, 1) for an event id, so a replay makes the same canary choice."""
    digest = hashlib.blake2b(f"{group_id}\0{ident}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Registry:
    """The handlers logistik routes to now; `replace` swaps them in keeping instance state."""

    def __init__(self, max_concurrency: int) -> None:
        self._max_concurrency = max_concurrency
        self._instances: dict[str, LiveHandler] = {}
        self._groups: dict[str, list[Group]] = {}
        self.version = 0

    def replace(self, handlers: Iterable[Handler], down: Iterable[Handler] = ()) -> None:
        """Make these handlers the live set; instances of unchanged node ids keep their state.

        `down` are handlers discovery reports unhealthy: their groups stay known, so their
        events go to the failed topic (to be replayed) instead of being skipped.
        """
        instances: dict[str, LiveHandler] = {}
        for handler in handlers:
            if not handler.active:
                continue
            old = self._instances.get(handler.node_id)
            # The concurrency limit counts requests: a batching model takes up to that many
            # requests of `batch_max_size` events each, so its events get as many slots.
            slots = self._max_concurrency * handler.batch_size
            if old is not None and old.handler == handler:
                instances[handler.node_id] = old
            elif old is not None and old.max_concurrency == slots:
                old.handler = handler
                instances[handler.node_id] = old
            else:
                instances[handler.node_id] = LiveHandler(handler, slots)
        self._instances = instances
        self._groups = _group(instances.values(), down)
        self.version += 1

    def instance(self, node_id: str) -> LiveHandler | None:
        """The live instance of a node id, if it is routed to."""
        return self._instances.get(node_id)

    def live(self) -> list[LiveHandler]:
        """Every instance routed to, with its runtime state."""
        return list(self._instances.values())

    def topics(self) -> set[str]:
        """Every topic that has at least one active handler."""
        return set(self._groups)

    def handlers(self) -> list[Handler]:
        """The active handlers."""
        return [i.handler for i in self._instances.values()]

    def groups(self, topic: str) -> list[Group]:
        """Every group subscribed to a topic."""
        return self._groups.get(topic, [])

    def group(self, topic: str, group_id: str) -> Group | None:
        """One group of a topic, if it is routed to."""
        return next((g for g in self._groups.get(topic, []) if g.group_id == group_id), None)

    def groups_for(self, topic: str, event: Event) -> list[Group]:
        """The groups an event goes to: all of its topic's, or those its channel list names."""
        groups = self._groups.get(topic, [])
        channels = channel_groups(event)
        if channels is None:
            return groups
        return [g for g in groups if g.group_id in channels]


def _group(instances: Iterable[LiveHandler], down: Iterable[Handler]) -> dict[str, list[Group]]:
    by_key: dict[tuple[str, str], Group] = {}
    for handler in down:
        if handler.model_type in (ModelType.MODEL, ModelType.CANARY):
            key = (handler.event, handler.group_id)
            by_key.setdefault(key, Group(handler.group_id, handler.event)).down.append(
                handler.node_id
            )
    for instance in sorted(instances, key=lambda i: i.node_id):
        handler = instance.handler
        key = (handler.event, handler.group_id)
        group = by_key.setdefault(key, Group(handler.group_id, handler.event))
        if handler.model_type == ModelType.CANARY:
            group.canaries.append(instance)
        elif handler.model_type == ModelType.DECOY:
            group.decoys.append(instance)
        elif handler.model_type == ModelType.MODEL:
            group.production.append(instance)
    topics: dict[str, list[Group]] = {}
    for (topic, _), group in sorted(by_key.items()):
        if group.answerable or group.decoys or group.down:
            topics.setdefault(topic, []).append(group)
    return topics

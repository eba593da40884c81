"""logistik's own figures per handler and per topic, kept in memory for the API and the UI."""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from logistik.answer import Answer

KINDS = ("ok", "ignored", "duplicate", "refused", "error", "timeout")
LATENCY_SAMPLES = 2048  # recent calls kept per handler for percentiles
# The history kept per handler, for charts over three spans: (span name, bucket width in
# seconds, buckets kept). The width of the one-hour series is also the rate's unit.
SERIES = (("5m", 10, 30), ("1h", 60, 60), ("24h", 3600, 24))
FINEST_WIDTH_S = min(width for _, width, _ in SERIES)
# Calls are gathered per finest bucket before they are added to every series.
assert all(width % FINEST_WIDTH_S == 0 for _, width, _ in SERIES)
RATE_WINDOW_S = 300  # events per minute are averaged over this long (or since first seen)
# Latency histogram buckets (seconds), as Prometheus' defaults plus finer low ones.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)
RECENT_FAILURES = 200


def percentile(sorted_values: list[float], share: float) -> float | None:
    """The value below which `share` of the sorted values fall (nearest rank)."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, round(share * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


@dataclass
class Bucket:
    """Calls of one handler during one bucket of time."""

    start: int  # unix time divided by the bucket's width
    calls: int = 0
    errors: int = 0
    latency_sum_s: float = 0.0


@dataclass
class Series:
    """A handler's calls in buckets of `width_s`, the last `count` of them."""

    width_s: int
    count: int
    buckets: deque[Bucket] = field(init=False)

    def __post_init__(self) -> None:
        self.buckets = deque(maxlen=self.count)

    def add(self, at_s: float, calls: int, errors: int, latency_sum_s: float) -> None:
        """Count calls in the bucket of `at_s`."""
        start = int(at_s // self.width_s)
        if not self.buckets or self.buckets[-1].start != start:
            self.buckets.append(Bucket(start))
        bucket = self.buckets[-1]
        bucket.calls += calls
        bucket.latency_sum_s += latency_sum_s
        bucket.errors += errors

    def absorb(self, buckets: list[list[float]]) -> None:
        """Add another process's buckets (`[start, calls, errors, latency_sum_s]`) to these."""
        merged = {b.start: b for b in self.buckets}
        for start, calls, errors, latency_sum_s in buckets:
            bucket = merged.setdefault(int(start), Bucket(int(start)))
            bucket.calls += int(calls)
            bucket.errors += int(errors)
            bucket.latency_sum_s += latency_sum_s
        self.buckets.clear()
        self.buckets.extend(merged[start] for start in sorted(merged))

    def calls_since(self, since_s: float) -> int:
        """Calls in the buckets that start at or after `since_s`."""
        first = int(since_s // self.width_s)
        return sum(b.calls for b in self.buckets if b.start >= first)

    def points(self) -> dict[str, Any]:
        """The series as the API shows it: its width and each bucket's start and figures."""
        return {
            "step_s": self.width_s,
            "points": [
                {
                    "at": b.start * self.width_s,
                    "calls": b.calls,
                    "errors": b.errors,
                    "latency_ms": b.latency_sum_s / b.calls * 1000 if b.calls else None,
                }
                for b in self.buckets
            ],
        }


@dataclass
class HandlerFigures:
    """What logistik saw of one handler since it first routed to it."""

    node_id: str
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    requests: int = 0
    retries: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    series: dict[str, Series] = field(
        default_factory=lambda: {name: Series(width, count) for name, width, count in SERIES}
    )
    last_error: str = ""
    last_error_at: datetime | None = None
    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S))
    latency_sum_s: float = 0.0
    # The calls of the finest bucket under way, added to every series at once when it ends
    # or is read: one addition per call rather than one per series.
    _pending: Bucket = field(
        default_factory=lambda: Bucket(-1), init=False, repr=False, compare=False
    )

    def record(self, answer: Answer, retry: bool, now_s: float) -> None:
        """Count one call and its answer."""
        self.requests += 1
        self.latency_sum_s += answer.latency_s
        index = bisect.bisect_left(LATENCY_BUCKETS_S, answer.latency_s)
        if index < len(self.bucket_counts):
            self.bucket_counts[index] += 1
        self.retries += int(retry)
        kind = answer.kind
        self.answers[kind] += 1
        self.latencies_s.append(answer.latency_s)
        failed = kind in ("error", "timeout", "refused")
        pending = self._pending
        start = int(now_s // FINEST_WIDTH_S)
        if pending.start != start:
            self._flush()
            pending.start = start
        pending.calls += 1
        pending.latency_sum_s += answer.latency_s
        if failed:
            pending.errors += 1
            self.last_error = answer.error
            self.last_error_at = datetime.now(UTC)

    def _flush(self) -> None:
        """Add the calls of the bucket under way to every series."""
        pending = self._pending
        if pending.calls:
            at_s = pending.start * FINEST_WIDTH_S
            for series in self.series.values():
                series.add(at_s, pending.calls, pending.errors, pending.latency_sum_s)
            pending.calls = pending.errors = 0
            pending.latency_sum_s = 0.0

    def raw(self) -> dict[str, Any]:
        """Everything counted, as plain data another process can add to its own (`absorb`)."""
        self._flush()
        return {
            "since": self.since.isoformat(),
            "requests": self.requests,
            "retries": self.retries,
            "answers": dict(self.answers),
            "latencies_s": list(self.latencies_s),
            "series": {
                name: [[b.start, b.calls, b.errors, b.latency_sum_s] for b in series.buckets]
                for name, series in self.series.items()
            },
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "bucket_counts": list(self.bucket_counts),
            "latency_sum_s": self.latency_sum_s,
        }

    def absorb(self, raw: dict[str, Any]) -> None:
        """Add another process's figures of the same handler (from `raw`)."""
        self._flush()
        self.since = min(self.since, datetime.fromisoformat(raw["since"]))
        self.requests += raw["requests"]
        self.retries += raw["retries"]
        self.answers.update(raw["answers"])
        self.latencies_s.extend(raw["latencies_s"])
        for name, buckets in raw["series"].items():
            series = self.series.get(name)
            if series is not None:
                series.absorb(buckets)
        at = raw["last_error_at"]
        if at is not None and (
            self.last_error_at is None or datetime.fromisoformat(at) > self.last_error_at
        ):
            self.last_error, self.last_error_at = raw["last_error"], datetime.fromisoformat(at)
        self.bucket_counts = [
            a + b for a, b in zip(self.bucket_counts, raw["bucket_counts"], strict=True)
        ]
        self.latency_sum_s += raw["latency_sum_s"]

    def recent_calls(self, now_s: float, window_s: float = RATE_WINDOW_S) -> int:
        """Calls in about the last `window_s` seconds (whole buckets of ten seconds)."""
        self._flush()
        return self.series["5m"].calls_since(now_s - window_s)

    def per_minute(self, now_s: float) -> float:
        """Calls per minute over the last five minutes, or since the first call when that is
        less (at least ten seconds, so that a first few calls are not taken for a rate)."""
        watched_s = (datetime.now(UTC) - self.since).total_seconds()
        window_s = min(RATE_WINDOW_S, max(10.0, watched_s))
        return self.recent_calls(now_s, window_s) * 60 / window_s

    def snapshot(self, now_s: float) -> dict[str, Any]:
        """The figures as plain data."""
        self._flush()
        ordered = sorted(self.latencies_s)
        return {
            "node_id": self.node_id,
            "since": self.since.isoformat(),
            "uptime_s": (datetime.now(UTC) - self.since).total_seconds(),
            "requests": self.requests,
            "retries": self.retries,
            "answers": {kind: self.answers.get(kind, 0) for kind in KINDS},
            "latency_ms": {
                name: None if (v := percentile(ordered, share)) is None else v * 1000
                for name, share in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
            },
            "per_minute_5m": self.per_minute(now_s),
            "last_error": self.last_error or None,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "series": {name: series.points() for name, series in self.series.items()},
        }


class Figures:
    """Figures of every handler and topic this process routed to."""

    def __init__(self) -> None:
        self.handlers: dict[str, HandlerFigures] = {}
        self.events_in: Counter[str] = Counter()
        self.published: Counter[str] = Counter()
        self.deferred: Counter[str] = Counter()  # (event, group) pairs sent to the retry topic
        self.retried: Counter[str] = Counter()  # retry records taken back and handled
        self.failed: Counter[tuple[str, str]] = Counter()
        self.recent_failures: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)

    def raw(self) -> dict[str, Any]:
        """Everything counted, as plain data another process can add to its own (`absorb`)."""
        return {
            "handlers": {node_id: f.raw() for node_id, f in self.handlers.items()},
            "events_in": dict(self.events_in),
            "published": dict(self.published),
            "deferred": dict(self.deferred),
            "retried": dict(self.retried),
            "failed": [[topic, reason, n] for (topic, reason), n in self.failed.items()],
            "recent_failures": list(self.recent_failures),
        }

    def absorb(self, raw: dict[str, Any]) -> None:
        """Add another process's figures (from `raw`) to these: the workers of one host."""
        for node_id, handler_raw in raw["handlers"].items():
            figures = self.handlers.get(node_id)
            if figures is None:
                figures = self.handlers[node_id] = HandlerFigures(
                    node_id, since=datetime.fromisoformat(handler_raw["since"])
                )
            figures.absorb(handler_raw)
        self.events_in.update(raw["events_in"])
        self.published.update(raw["published"])
        self.deferred.update(raw["deferred"])
        self.retried.update(raw["retried"])
        self.failed.update({(topic, reason): n for topic, reason, n in raw["failed"]})
        failures = sorted(
            [*self.recent_failures, *raw["recent_failures"]],
            key=lambda details: str(details.get("at", "")),
            reverse=True,
        )
        self.recent_failures = deque(failures[:RECENT_FAILURES], maxlen=RECENT_FAILURES)

    def refill(self, raws: list[dict[str, Any]]) -> None:
        """Become the sum of these figures (of each worker of one host), forgetting the past."""
        self.handlers = {}
        for counter in (self.events_in, self.published, self.deferred, self.retried):
            counter.clear()
        self.failed.clear()
        self.recent_failures.clear()
        for raw in raws:
            self.absorb(raw)

    def failure(self, topic: str, reason: str, details: dict[str, Any]) -> None:
        """Count a record written to a failed topic and keep it among the recent ones."""
        self.failed[(topic, reason)] += 1
        self.recent_failures.appendleft(details)

    def call(self, node_id: str, answer: Answer, retry: bool) -> None:
        """Count a model call."""
        figures = self.handlers.get(node_id)
        if figures is None:
            figures = self.handlers[node_id] = HandlerFigures(node_id)
        figures.record(answer, retry, time.time())

    def handler(self, node_id: str) -> dict[str, Any] | None:
        """One handler's figures, None if it was never called."""
        figures = self.handlers.get(node_id)
        return figures.snapshot(time.time()) if figures else None

    def topics(self) -> dict[str, dict[str, Any]]:
        """Per topic: events in, answers published, records failed by reason."""
        names = set(self.events_in) | set(self.published) | {t for t, _ in self.failed}
        return {
            name: {
                "events_in": self.events_in[name],
                "published": self.published[name],
                "failed": {r: n for (t, r), n in self.failed.items() if t == name},
            }
            for name in sorted(names)
        }

"""The front worker's figures: the sum of every worker's, as the API and /metrics show them."""

from __future__ import annotations

import orjson
import pytest

from logistik.answer import Answer, Outcome
from logistik.observe.figures import Figures, HandlerFigures


def worker(calls: int, latency_s: float, failures: int = 0) -> Figures:
    """One worker's figures after `calls` answered calls and `failures` failed ones."""
    figures = Figures()
    for _ in range(calls):
        figures.call("m", Answer(Outcome.OK, 200, body=b"{}", latency_s=latency_s), False)
    for n in range(failures):
        error = Answer(Outcome.RETRY, 503, error=f"HTTP 503 #{n}", latency_s=latency_s)
        figures.call("m", error, True)
    figures.events_in["detect"] += calls + failures
    figures.published["detect"] += calls
    figures.deferred["detect"] += failures
    figures.failure("detect", "rejected", {"at": f"2026-01-0{calls % 9 + 1}T00:00:00"})
    return figures


def test_the_sum_of_two_workers_counts_every_call_once() -> None:
    one, two = worker(30, 0.010), worker(10, 0.030, failures=2)
    shown = Figures()
    # Through JSON, as a worker sends them to the front.
    shown.refill([orjson.loads(orjson.dumps(f.raw())) for f in (one, two)])
    view = shown.handler("m")
    assert view is not None
    assert view["requests"] == 42
    assert view["retries"] == 2
    assert view["answers"]["ok"] == 40 and view["answers"]["error"] == 2
    assert 10.0 <= view["latency_ms"]["p50"] <= 10.001  # 30 of the 42 samples took 10 ms
    assert view["last_error"] == "HTTP 503 #1"
    assert sum(p["calls"] for p in view["series"]["5m"]["points"]) == 42
    assert shown.topics() == {
        "detect": {"events_in": 42, "published": 40, "failed": {"rejected": 2}}
    }
    assert dict(shown.deferred) == {"detect": 2}
    assert sum(shown.handlers["m"].bucket_counts) == 42
    assert [f["at"] for f in shown.recent_failures] == [
        "2026-01-04T00:00:00",
        "2026-01-02T00:00:00",
    ]


def test_a_refill_forgets_what_was_summed_before() -> None:
    shown = Figures()
    shown.refill([worker(5, 0.01).raw(), worker(5, 0.01).raw()])
    shown.refill([worker(3, 0.01).raw()])
    view = shown.handler("m")
    assert view is not None and view["requests"] == 3
    assert shown.topics()["detect"]["events_in"] == 3
    assert len(shown.recent_failures) == 1


def test_a_handlers_series_show_every_call_once_whenever_read() -> None:
    # Calls are gathered per ten-second bucket before they reach the series: a read in the
    # middle of a bucket shows them, and the bucket's end does not count them again.
    figures = HandlerFigures("m")
    ok = Answer(Outcome.OK, 200, body=b"{}", latency_s=0.01)
    failed = Answer(Outcome.RETRY, 503, error="HTTP 503", latency_s=0.02)
    start_s = 1_800_000_000.0  # the start of a ten-second bucket
    for n in range(5):
        figures.record(ok, False, start_s + n)
    middle = figures.snapshot(start_s + 5)["series"]
    assert [(p["at"], p["calls"]) for p in middle["5m"]["points"]] == [(start_s, 5)]
    for n in range(3):
        figures.record(failed, True, start_s + 6 + n)
    figures.record(ok, False, start_s + 12)  # the next bucket
    series = figures.snapshot(start_s + 13)["series"]
    points = [(p["at"], p["calls"], p["errors"]) for p in series["5m"]["points"]]
    assert points == [(start_s, 8, 3), (start_s + 10, 1, 0)]
    assert series["5m"]["points"][0]["latency_ms"] == pytest.approx((5 * 10 + 3 * 20) / 8)
    assert [p["calls"] for p in series["1h"]["points"]] == [9]  # one minute holds them all
    assert figures.recent_calls(start_s + 13) == 9
    assert sum(b[1] for b in figures.raw()["series"]["24h"]) == 9

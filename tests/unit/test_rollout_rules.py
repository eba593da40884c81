"""The rollout decision rule as pure functions: intervals, the sequential test, each outcome."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from logistik.answer import Answer, Outcome
from logistik.control.rollout_model import RolloutOptions, parse_duration_s
from logistik.control.rollout_rules import (
    SEQUENTIAL_ALPHA,
    Limits,
    Window,
    decide,
    mixture_log_lr,
    newcombe,
    quantile_bounds_s,
    quantile_ranks,
    quantile_s,
    wilson,
)
from logistik.handler import Handler
from logistik.routing.registry import Group, LiveHandler
from logistik.routing.rollout_tally import CANARY, PRODUCTION, Counts, RolloutTally, Watched

LIMITS = Limits(
    min_events=100,
    step_wait_s=10.0,
    max_error_rate_increase=0.05,
    max_p99_increase=1.2,
    min_agreement=0.95,
)
THRESHOLD = -__import__("math").log(SEQUENTIAL_ALPHA)


def counts(calls: int, errors: int = 0, latency_s: float = 0.02, spread_s: float = 0.002) -> Counts:
    """Calls with `errors` failures and latencies spread evenly around `latency_s`."""
    result = Counts()
    for i in range(calls):
        failed = i < errors
        latency = latency_s + spread_s * ((i * 7919) % 100) / 100
        result.record(
            Answer(
                Outcome.RETRY if failed else Outcome.OK, 500 if failed else 200, latency_s=latency
            )
        )
    return result


def window(canary: Counts, production: Counts, **fields: object) -> Window:
    values: dict[str, object] = {
        "elapsed_s": 60.0,
        "last_step": False,
        "needs_agreement": False,
        **fields,
    }
    return Window(canary, production, **values)  # type: ignore[arg-type]


def test_wilson_interval_matches_published_values() -> None:
    low, high = wilson(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    assert wilson(0, 40)[0] == 0.0 and round(wilson(0, 40)[1], 4) == 0.0876
    assert wilson(0, 0) == (0.0, 1.0)


def test_newcombe_difference_matches_newcombes_example() -> None:
    # Newcombe (1998), method 10, 56/70 against 48/80: 0.0524 to 0.3339.
    low, high = newcombe(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)


def test_quantile_ranks_bound_the_99th_percentile() -> None:
    assert quantile_ranks(1000, 0.99) == (983, 997)
    assert quantile_ranks(100_000, 0.99) == (98938, 99063)  # the normal curve, near exact
    assert quantile_ranks(1000, 0.5) == (469, 532)
    low, high = quantile_ranks(50, 0.99)
    assert 0 < low < 50 and high is None  # 50 calls cannot bound a p99 from above
    rng = random.Random(7)
    misses = 0
    for _ in range(400):  # the bounds hold about 97.5 % of the time each
        sample = sorted(rng.random() for _ in range(1000))
        misses += int(not sample[983 - 1] <= 0.99 <= sample[997 - 1])
    assert misses <= 25


def test_histogram_percentiles_are_within_a_bucket() -> None:
    window_counts = counts(1000, latency_s=0.010, spread_s=0.010)
    p50, p99 = quantile_s(window_counts.latency, 0.5), quantile_s(window_counts.latency, 0.99)
    assert p50 is not None and p99 is not None
    assert 0.0145 <= p50 <= 0.0158 and 0.0195 <= p99 <= 0.0210
    low, high = quantile_bounds_s(window_counts.latency, 0.99)
    assert low is not None and high is not None and low <= p99 <= high


def test_sequential_test_stops_a_broken_canary_within_tens_of_events() -> None:
    rng = random.Random(3)
    stopped_after = []
    for _ in range(50):
        failures = 0
        for n in range(1, 500):
            failures += int(rng.random() < 0.2)
            if mixture_log_lr(failures, n, 0.015) >= THRESHOLD:
                stopped_after.append(n)
                break
    assert len(stopped_after) == 50
    assert max(stopped_after) < 100 and sum(stopped_after) / 50 < 40


def test_sequential_test_rarely_stops_a_canary_at_the_limit() -> None:
    rng = random.Random(5)
    stopped = 0
    for _ in range(200):
        failures = 0
        for n in range(1, 2000):
            failures += int(rng.random() < 0.05)
            if n % 10 == 0 and mixture_log_lr(failures, n, 0.05) >= THRESHOLD:
                stopped += 1
                break
    assert stopped <= 2  # at most 0.1 % in theory


def test_a_step_holds_until_its_events_and_its_wait_have_passed() -> None:
    verdict = decide(window(counts(50), counts(950)), LIMITS)
    assert (verdict.outcome, verdict.rule) == ("hold", "collecting")
    verdict = decide(window(counts(200), counts(3800), elapsed_s=5.0), LIMITS)
    assert (verdict.outcome, verdict.rule) == ("hold", "collecting")


def test_a_canary_like_production_advances_then_is_promoted() -> None:
    few = decide(window(counts(200), counts(3800)), LIMITS)
    assert (few.outcome, few.reason) == ("hold", "not enough evidence yet on p99")
    good = window(counts(400), counts(7600))
    verdict = decide(good, LIMITS)
    assert (verdict.outcome, verdict.rule) == ("advance", "passed")
    assert verdict.figures["canary"]["calls"] == 400
    assert verdict.figures["checks"]["errors"]["state"] == "pass"
    good.last_step = True
    assert decide(good, LIMITS).outcome == "promote"


def test_a_failing_canary_is_rolled_back_by_the_sequential_test_before_its_step_ends() -> None:
    limits = Limits(500, 600.0, 0.01, 1.2, 0.95)
    verdict = decide(window(counts(40, errors=8), counts(760), elapsed_s=1.0), limits)
    assert (verdict.outcome, verdict.rule) == ("rollback", "errors-sequential")
    assert verdict.figures["checks"]["sequential"]["errors"]["log_lr"] >= THRESHOLD


def test_a_slightly_worse_canary_is_rolled_back_at_the_step_end_by_the_interval() -> None:
    limits = Limits(2000, 0.0, 0.01, 1.2, 0.95)
    verdict = decide(window(counts(4000, errors=90), counts(40000, errors=200)), limits)
    assert (verdict.outcome, verdict.rule) == ("rollback", "error-rate")
    low, _high = verdict.figures["checks"]["errors"]["increase_interval"]
    assert low > 0.01


def test_too_few_events_to_tell_holds() -> None:
    limits = Limits(100, 0.0, 0.01, 1.2, 0.95)
    verdict = decide(window(counts(100, errors=1), counts(1900, errors=10)), limits)
    assert (verdict.outcome, verdict.rule) == ("hold", "inconclusive")
    assert "error rate" in verdict.reason


def test_a_slow_canary_is_rolled_back_or_held_as_asked() -> None:
    slow = window(counts(200, latency_s=0.060), counts(3800, latency_s=0.020))
    verdict = decide(slow, LIMITS)
    assert (verdict.outcome, verdict.rule) == ("rollback", "latency")
    assert verdict.figures["checks"]["p99"]["ratio"] > 2.5
    assert "p50" in verdict.reason and "p99" in verdict.reason
    holding = Limits(100, 10.0, 0.05, 1.2, 0.95, on_slow="hold")
    assert (decide(slow, holding).outcome, decide(slow, holding).rule) == ("hold", "latency")


def test_a_slow_median_is_caught_when_noise_hides_it_at_p99() -> None:
    production, canary = counts(400, latency_s=0.020), counts(400, latency_s=0.060)
    production.add(counts(8, latency_s=0.500))  # a few stalls make production's p99 slow
    verdict = decide(window(canary, production), LIMITS)
    assert (verdict.outcome, verdict.rule) == ("rollback", "latency")
    assert verdict.figures["checks"]["p99"]["state"] != "fail"
    assert verdict.figures["checks"]["p50"]["state"] == "fail"
    assert verdict.reason.startswith("latency: the canary's p50 is above 1.2 x production's")


def test_at_a_step_without_production_a_slow_p99_holds_and_an_unknown_one_passes() -> None:
    slow = window(
        counts(400, latency_s=0.060),
        counts(7600, latency_s=0.020),
        production_from="earlier steps",
        last_step=True,
    )
    assert (decide(slow, LIMITS).outcome, decide(slow, LIMITS).rule) == ("hold", "latency")
    few = window(counts(200), counts(7600), production_from="earlier steps", last_step=True)
    assert decide(few, LIMITS).outcome == "promote"


def test_a_disagreeing_canary_is_rolled_back_on_agreement() -> None:
    canary = counts(30)
    canary.compared, canary.agreed = 30, 0
    verdict = decide(window(canary, counts(570), needs_agreement=True, elapsed_s=1.0), LIMITS)
    assert (verdict.outcome, verdict.rule) == ("rollback", "agreement-sequential")
    agreeing = counts(400)
    agreeing.compared, agreeing.agreed = 400, 400
    passed = decide(window(agreeing, counts(7600), needs_agreement=True), LIMITS)
    assert passed.outcome == "advance"
    assert passed.figures["canary"]["agreement"] == 1.0


def test_options_read_text_and_refuse_nonsense() -> None:
    options = RolloutOptions.model_validate({"steps": "5,25,100", "step_wait": "10m"})
    assert options.steps == [5, 25, 100] and options.step_wait_s == 600
    assert RolloutOptions().steps == [5, 25, 50, 100] and RolloutOptions().min_events == 500
    assert parse_duration_s("1.5h") == 5400 and parse_duration_s("250ms") == 0.25
    for steps in ("25,5", "0,50", "50,150", ""):
        with pytest.raises(ValidationError):
            RolloutOptions.model_validate({"steps": steps})
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s("soon")


def live(name: str, model_type: str, traffic: float = 0.0) -> LiveHandler:
    handler = Handler(
        name="face",
        event="detect",
        endpoint=name,
        port=5000,
        model_type=model_type,  # type: ignore[arg-type]
        traffic=traffic,
        return_to="out",
    )
    return LiveHandler(handler, 4)


def test_tally_counts_the_watched_group_per_role_and_shadows_a_share_of_canary_events() -> None:
    production, canary = live("a", "model"), live("b", "canary", 0.5)
    group = Group("face", "detect", production=[production], canaries=[canary])
    tally = RolloutTally()
    ok = Answer(Outcome.OK, 200, latency_s=0.01)
    tally.call(canary.handler, ok)
    assert tally.drain() == {}  # nothing watched yet
    tally.watch([Watched(1, 0, "detect", "face", canary.node_id, shadow_share=0.5)])
    tally.call(canary.handler, ok)
    tally.call(canary.handler, Answer(Outcome.RETRY, None, timed_out=True, latency_s=1.0))
    tally.call(production.handler, ok)
    tally.compared(production.handler, True)
    drained = tally.drain()
    assert drained[(1, 0, CANARY)].calls == 2 and drained[(1, 0, CANARY)].timeouts == 1
    assert drained[(1, 0, CANARY)].compared == 1 and drained[(1, 0, PRODUCTION)].calls == 1
    shadowed = [i for i in range(2000) if tally.shadows(group, {"id": str(i)})]
    assert 0.2 <= len(shadowed) / 2000 <= 0.3  # half of the canary's half
    assert shadowed == [i for i in range(2000) if tally.shadows(group, {"id": str(i)})]

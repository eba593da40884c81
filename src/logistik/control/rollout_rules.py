"""The statistics a rollout decides by: intervals on proportions and quantiles, a sequential test.

Every function here is pure: counts in, figures out. `decide` is the whole rule; the README's
"Rollouts" section says it in words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from logistik.routing.rollout_tally import Counts, bucket_edges_s

Z = 1.959964  # two-sided 95 %: each bound holds with 97.5 %
ALPHA_BOUND = 0.025  # the chance that one order-statistic bound is wrong
SEQUENTIAL_ALPHA = 0.001  # the chance that the sequential test ever rolls back a good canary
SEQUENTIAL_GRID = 20  # alternatives the sequential test mixes
NORMAL_FROM = 200.0  # n * share * (1 - share) above which quantile ranks use the normal curve


class Outcome(StrEnum):
    """What a rollout does after looking at a window."""

    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"
    PROMOTE = "promote"


class Check(StrEnum):
    """The state of one comparison."""

    PASS = "pass"
    FAIL = "fail"
    UNSURE = "unsure"


def wilson(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) without observations."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z) -> tuple[float, float]:
    """Newcombe's hybrid score interval of the difference p1 - p2 of two proportions."""
    p1 = x1 / n1 if n1 else 0.0
    p2 = x2 / n2 if n2 else 0.0
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


def mixture_log_lr(failures: int, n: int, p0: float, grid: int = SEQUENTIAL_GRID) -> float:
    """Log likelihood ratio of a mixture sequential probability ratio test of p <= p0.

    The alternative mixes `grid` failure rates spread (log-evenly) between p0 and 1 with equal
    weights. Each component is a non-negative supermartingale while the true rate is at most
    p0, and so is their mean: by Ville's inequality the ratio ever reaches 1/alpha with
    probability at most alpha, however often it is looked at.
    """
    if n <= 0 or not 0.0 < p0 < 1.0:
        return 0.0
    logs = []
    for k in range(1, grid + 1):
        theta = math.exp(math.log(p0) * (1 - k / (grid + 1)))
        logs.append(
            failures * math.log(theta / p0) + (n - failures) * math.log((1 - theta) / (1 - p0))
        )
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs) / grid)


def _log_pmf(k: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def quantile_ranks(n: int, share: float, alpha: float = ALPHA_BOUND) -> tuple[int, int | None]:
    """1-based ranks (low, high) of order statistics that bound the `share` quantile.

    The low one is below the quantile with probability at least 1 - alpha, the high one above
    it likewise (distribution-free). `low` is 0 and `high` None where n is too small to say.
    Exact binomial tails; for large samples their normal approximation.
    """
    spread = n * share * (1 - share)
    if spread > NORMAL_FROM:
        half = Z * math.sqrt(spread)
        return max(0, math.floor(n * share - half)), min(n, math.ceil(n * share + half) + 1)
    low, high = 0, None
    tail = 0.0  # P(Binomial(n, share) >= k), growing as k falls from n
    for k in range(n, 0, -1):
        tail += math.exp(_log_pmf(k, n, share))
        if tail <= alpha:
            high = k  # fewer than k of n below the quantile: unlikely, so X_(k) is above it
        if tail >= 1 - alpha:
            low = k
            break
    return low, high


def ranked_s(latency: dict[int, int], rank: int, upper_edge: bool = True) -> float | None:
    """The latency of the call at a 1-based rank of a histogram (a bucket edge)."""
    if rank <= 0:
        return None
    seen = 0
    for bucket in sorted(latency):
        seen += latency[bucket]
        if seen >= rank:
            low_s, high_s = bucket_edges_s(bucket)
            return high_s if upper_edge else low_s
    return None


def quantile_s(latency: dict[int, int], share: float) -> float | None:
    """The `share` quantile (nearest rank) of a histogram, None when it is empty."""
    n = sum(latency.values())
    return ranked_s(latency, max(1, math.ceil(share * n))) if n else None


def quantile_bounds_s(latency: dict[int, int], share: float) -> tuple[float | None, float | None]:
    """Order-statistic bounds of a quantile; None where the sample cannot say."""
    n = sum(latency.values())
    low, high = quantile_ranks(n, share)
    return (
        ranked_s(latency, low, upper_edge=False) if low else None,
        ranked_s(latency, high) if high else None,
    )


@dataclass(frozen=True)
class Limits:
    """What a rollout tolerates, and how long each step lasts at least."""

    min_events: int
    step_wait_s: float
    max_error_rate_increase: float
    max_p99_increase: float
    min_agreement: float
    on_slow: str = "rollback"  # or "hold"
    max_p50_increase: float = 1.2


@dataclass
class Window:
    """One step's counts: the canary's, and production's on the same events or time."""

    canary: Counts
    production: Counts
    elapsed_s: float
    last_step: bool
    needs_agreement: bool  # a decoy stage or a shadow share: answers are compared
    production_from: str = "this step"  # or "earlier steps" when production got no events
    processes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    """A decision and what it rests on."""

    outcome: Outcome
    rule: str
    reason: str
    figures: dict[str, Any]


def _ms(value_s: float | None) -> float | None:
    return None if value_s is None else round(value_s * 1000, 3)


def _rounded(values: tuple[float, float]) -> list[float]:
    return [round(values[0], 6), round(values[1], 6)]


def side_figures(counts: Counts, with_agreement: bool) -> dict[str, Any]:
    """One side's figures: counts, rates with intervals, latency percentiles."""
    low, high = quantile_bounds_s(counts.latency, 0.99)
    p50_low, p50_high = quantile_bounds_s(counts.latency, 0.5)
    figures: dict[str, Any] = {
        "calls": counts.calls,
        "errors": counts.errors,
        "timeouts": counts.timeouts,
        "error_rate": round(counts.errors / counts.calls, 6) if counts.calls else None,
        "error_interval": _rounded(wilson(counts.errors, counts.calls)),
        "p50_ms": _ms(quantile_s(counts.latency, 0.5)),
        "p50_interval_ms": [_ms(p50_low), _ms(p50_high)],
        "p99_ms": _ms(quantile_s(counts.latency, 0.99)),
        "p99_interval_ms": [_ms(low), _ms(high)],
    }
    if with_agreement:
        figures.update(
            compared=counts.compared,
            agreed=counts.agreed,
            agreement=round(counts.agreed / counts.compared, 6) if counts.compared else None,
            agreement_interval=_rounded(wilson(counts.agreed, counts.compared)),
        )
    return figures


def _error_check(window: Window, limits: Limits) -> tuple[Check, dict[str, Any]]:
    canary, production = window.canary, window.production
    low, high = newcombe(canary.errors, canary.calls, production.errors, production.calls)
    limit = limits.max_error_rate_increase
    if production.calls == 0:
        state = Check.UNSURE
    elif low > limit:
        state = Check.FAIL
    elif high <= limit:
        state = Check.PASS
    else:
        state = Check.UNSURE
    return state, {"state": state, "increase_interval": _rounded((low, high)), "limit": limit}


def _latency_check(window: Window, share: float, ratio: float) -> tuple[Check, dict[str, Any]]:
    """Slower: the canary's quantile is above `ratio` x production's even taking its lower
    bound against production's upper bound. Not slower: its upper bound is within `ratio` x
    production's quantile (a p99 takes about 300 canary answers to bound from above)."""
    canary_q = quantile_s(window.canary.latency, share)
    production_q = quantile_s(window.production.latency, share)
    canary_low, canary_high = quantile_bounds_s(window.canary.latency, share)
    _, production_high = quantile_bounds_s(window.production.latency, share)
    if canary_q is None or production_q is None:
        state = Check.UNSURE
    elif (
        canary_low is not None
        and production_high is not None
        and canary_low > ratio * production_high
    ):
        state = Check.FAIL
    elif canary_high is not None and canary_high <= ratio * production_q:
        state = Check.PASS
    else:
        state = Check.UNSURE
    return state, {
        "state": state,
        "limit": ratio,
        "ratio": round(canary_q / production_q, 4)
        if canary_q is not None and production_q
        else None,
    }


def _latency_checks(window: Window, limits: Limits) -> dict[str, tuple[Check, dict[str, Any]]]:
    return {
        "p50": _latency_check(window, 0.5, limits.max_p50_increase),
        "p99": _latency_check(window, 0.99, limits.max_p99_increase),
    }


def _agreement_check(window: Window, limits: Limits) -> tuple[Check, dict[str, Any]]:
    canary = window.canary
    low, high = wilson(canary.agreed, canary.compared)
    if canary.compared == 0:
        state = Check.UNSURE
    elif high < limits.min_agreement:
        state = Check.FAIL
    elif low >= limits.min_agreement:
        state = Check.PASS
    else:
        state = Check.UNSURE
    return state, {"state": state, "limit": limits.min_agreement}


def _sequential(window: Window, limits: Limits) -> tuple[str | None, dict[str, Any]]:
    """The always-valid tests, looked at on every tick: errors, and disagreement."""
    threshold = math.log(1 / SEQUENTIAL_ALPHA)
    canary, production = window.canary, window.production
    figures: dict[str, Any] = {"threshold_log_lr": round(threshold, 3)}
    fired = None
    if production.calls:
        p0 = wilson(production.errors, production.calls)[1] + limits.max_error_rate_increase
        log_lr = mixture_log_lr(canary.errors, canary.calls, p0)
        figures["errors"] = {"p0": round(p0, 6), "log_lr": round(log_lr, 3)}
        if log_lr >= threshold:
            fired = "errors-sequential"
    if window.needs_agreement:
        p0 = 1 - limits.min_agreement
        log_lr = mixture_log_lr(canary.compared - canary.agreed, canary.compared, p0)
        figures["disagreement"] = {"p0": round(p0, 6), "log_lr": round(log_lr, 3)}
        if log_lr >= threshold and fired is None:
            fired = "agreement-sequential"
    return fired, figures


SEQUENTIAL_REASONS = {
    "errors-sequential": "the canary's error rate is above production's by more than {limit} "
    "(sequential test, likelihood ratio over {ratio:.0f})",
    "agreement-sequential": "the canary's agreement with production is under {agreement} "
    "(sequential test, likelihood ratio over {ratio:.0f})",
}


def figures_of(window: Window, limits: Limits) -> dict[str, Any]:
    """Every figure of a window, checks included, without deciding."""
    _, sequential = _sequential(window, limits)
    checks = {
        "errors": _error_check(window, limits)[1],
        **{name: check[1] for name, check in _latency_checks(window, limits).items()},
        "sequential": sequential,
    }
    if window.needs_agreement:
        checks["agreement"] = _agreement_check(window, limits)[1]
    return {
        "window": {
            "elapsed_s": round(window.elapsed_s, 3),
            "production_from": window.production_from,
            "processes": window.processes,
        },
        "canary": side_figures(window.canary, window.needs_agreement),
        "production": side_figures(window.production, False),
        "checks": checks,
    }


def decide(window: Window, limits: Limits) -> Verdict:
    """Advance, hold, roll back or promote, from one step's window (see the README)."""
    figures = figures_of(window, limits)
    fired, _ = _sequential(window, limits)
    if fired is not None:
        reason = SEQUENTIAL_REASONS[fired].format(
            limit=limits.max_error_rate_increase,
            agreement=limits.min_agreement,
            ratio=1 / SEQUENTIAL_ALPHA,
        )
        return Verdict(Outcome.ROLLBACK, fired, reason, figures)
    if window.canary.calls < limits.min_events or window.elapsed_s < limits.step_wait_s:
        reason = (
            f"collecting: {window.canary.calls} of {limits.min_events} canary answers, "
            f"{window.elapsed_s:.0f} of {limits.step_wait_s:.0f} s"
        )
        return Verdict(Outcome.HOLD, "collecting", reason, figures)
    return _at_step_end(window, limits, figures)


def _at_step_end(window: Window, limits: Limits, figures: dict[str, Any]) -> Verdict:
    errors, _ = _error_check(window, limits)
    latency = {name: check[0] for name, check in _latency_checks(window, limits).items()}
    # Production's latency from earlier steps was measured under another load: there it can
    # hold a canary that is slower, never roll it back, and a latency it cannot tell passes.
    earlier = window.production_from != "this step"
    if earlier:
        latency = {n: Check.PASS if c is Check.UNSURE else c for n, c in latency.items()}
    agreement = _agreement_check(window, limits)[0] if window.needs_agreement else Check.PASS
    checks = figures["checks"]
    if errors is Check.FAIL:
        low = checks["errors"]["increase_interval"][0]
        reason = (
            f"error rate: the canary's is above production's by at least {low:.2%} "
            f"(allowed {limits.max_error_rate_increase:.2%})"
        )
        return Verdict(Outcome.ROLLBACK, "error-rate", reason, figures)
    if agreement is Check.FAIL:
        high = wilson(window.canary.agreed, window.canary.compared)[1]
        reason = f"agreement with production at most {high:.1%} (needed {limits.min_agreement:.1%})"
        return Verdict(Outcome.ROLLBACK, "agreement", reason, figures)
    slow = [name for name, state in latency.items() if state is Check.FAIL]
    if slow:
        reason = "latency: the canary's " + " and ".join(
            f"{name} is above {checks[name]['limit']:g} x production's" for name in slow
        )
        reason += " even at the bounds"
        if earlier:
            reason += " of earlier steps; held (no production events in this window)"
            return Verdict(Outcome.HOLD, "latency", reason, figures)
        if limits.on_slow == "hold":
            return Verdict(Outcome.HOLD, "latency", reason + "; held as asked", figures)
        return Verdict(Outcome.ROLLBACK, "latency", reason, figures)
    unsure = [
        name
        for name, state in (("error rate", errors), *latency.items(), ("agreement", agreement))
        if state is Check.UNSURE
    ]
    if unsure:
        reason = f"not enough evidence yet on {', '.join(unsure)}"
        return Verdict(Outcome.HOLD, "inconclusive", reason, figures)
    outcome = Outcome.PROMOTE if window.last_step else Outcome.ADVANCE
    return Verdict(outcome, "passed", "every check passed", figures)

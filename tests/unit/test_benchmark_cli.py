"""The benchmark's command line: its help, the README tables it prints from a JSON report, the
direct load it measures the model's own limit with, and the loops it compares logistik with."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
BENCHMARK = BENCH / "benchmark.py"
sys.path.insert(0, str(BENCH))  # the benchmark's own process helpers, as its scripts import them
import benchkit  # noqa: E402
import benchmark  # noqa: E402
from tests.support.kafkatools import TopicReader, create_topics, produce, unique  # noqa: E402


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARK), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def markdown(tmp_path: Path, data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`benchmark.py --markdown` of a report written as JSON under tmp_path."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    return bench("--markdown", str(path))


def measurement(
    phase: str, router: str, round_: int, rate: float, p50_ms: float, **extra: Any
) -> dict[str, Any]:
    """One measurement as a report stores it: 10,000 events at `rate`, CPU as given."""
    groups = extra.get("groups", 1)
    cpu_us = extra.get("cpu_us", {"model": 10.0})
    return {
        "phase": phase,
        "router": router,
        "round": round_,
        "events": 10_000,
        "seconds": 10_000 / rate,
        "latency_ms": {"p50": p50_ms, "p90": p50_ms * 2, "p99": p50_ms * 4, "max": p50_ms * 5},
        "cpu_s": {role: us * 10_000 / 1e6 for role, us in cpu_us.items()},
        "groups": groups,
        "rss_mb": extra.get("rss_mb", {}),
        "rss_peak_mb": {},
        "complete": True,
        "note": "",
        "hop_ms": extra.get("hop_ms", {}),
        "retried": extra.get("retried"),
        "events_per_s": rate,
        "calls_per_s": rate * groups,
        "cpu_us_per_event": cpu_us,
    }


def report() -> dict[str, Any]:
    """Two rounds of bursts, paced loads, three groups, a slow group and a long run."""
    router_cpu = {"router": 150.0, "model": 10.0, "broker": 30.0, "load": 3.0, "reader": 5.0}
    rss = {"start": 100.0, "middle": 120.0, "end": 121.0, "peak": 125.0}
    measurements = [
        measurement("burst", "direct", 1, 20_000.0, 3.0),
        measurement("burst", "plain-confluent", 1, 4_000.0, 300.0, cpu_us=router_cpu),
        measurement("burst", "kafka-only", 1, 6_000.0, 200.0, cpu_us=router_cpu),
        measurement("burst", "logistik", 1, 3_000.0, 400.0, cpu_us=router_cpu, rss_mb=rss),
        measurement("burst", "direct", 2, 22_000.0, 3.0),
        measurement("burst", "plain-confluent", 2, 5_000.0, 300.0, cpu_us=router_cpu),
        measurement("burst", "kafka-only", 2, 6_500.0, 200.0, cpu_us=router_cpu),
        measurement("burst", "logistik", 2, 4_000.0, 400.0, cpu_us=router_cpu, rss_mb=rss),
        measurement("burst", "logistik-workers", 1, 4_500.0, 400.0, cpu_us=router_cpu),
        measurement("burst", "logistik-workers", 2, 5_000.0, 400.0, cpu_us=router_cpu),
        measurement("paced", "direct", 1, 1_750.0, 0.3),
        measurement("paced", "logistik", 1, 1_750.0, 1.3, hop_ms={"p50": 0.5, "p99": 2.0}),
        measurement("groups", "logistik", 1, 1_500.0, 900.0, groups=3, retried=0),
        measurement("slow", "logistik", 1, 3_000.0, 400.0, retried=29_000),
        measurement("soak", "logistik", 1, 3_500.0, 400.0, rss_mb=rss),
    ]
    return {
        "machine": {"cores": 2, "cpu": "a test CPU", "load_average": [0.5, 0.5, 0.5]},
        "python": "3.11.7",
        "parameters": {
            "events": 10_000,
            "partitions": 4,
            "concurrency": 64,
            "rounds": 2,
            "client": "pycurl",
            "slow_delay_s": 2.0,
            "slow_seconds": 30.0,
            "paced_warm_up_s": 10.0,
            "logistik_settings": [],
        },
        "measurements": measurements,
    }


def test_help_names_the_options_that_choose_what_is_measured() -> None:
    done = bench("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--rounds", "--phases", "--report", "--markdown", "--soak-events"):
        assert option in done.stdout


def test_markdown_prints_the_readme_tables_of_a_report(tmp_path: Path) -> None:
    done = markdown(tmp_path, report())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Per-round ratios 0.75 and 0.80: the median and the range.
    assert "| plain loop, confluent-kafka + aiohttp | 4,500 (4,000-5,000) | 0.78 (0.75-0.80) |" in (
        done.stdout
    )
    assert "| logistik run | 3,500 (3,000-4,000) | - | 400.0 | 1600.0 | 150 | 198 | 121 |" in lines
    assert "| ≥ 1.5 x the faster plain loop | 0.78 x | **no** |" in lines
    # Kafka alone: 6,000 and 6,500 events/s, against the plain loop's 4,000 and 5,000.
    assert "| Kafka alone: the confluent-kafka loop, no model call | 6,250 (6,000-6,500) |" in (
        done.stdout
    )
    assert (
        "Kafka alone (the confluent-kafka loop, no model call) ÷ the faster plain loop: "
        "1.40 (1.30-1.50)." in lines
    )
    # Two workers: 4,500 and 5,000 events/s, against the plain loop's 4,000 and 5,000.
    assert (
        "`logistik run --workers 2` ÷ the faster plain loop: 1.06 (1.00-1.12); "
        "÷ `logistik run` (one worker): 1.38 (1.25-1.50)." in lines
    )
    assert "| ≥ 1.5 x the faster plain loop, with --workers | 1.06 x | **no** |" in lines
    assert "| added p50 ≤ 2 ms at half peak | +1.0 ms | yes |" in lines
    assert any(
        line.startswith("| paced, ~1,750 events/s, after 10 s of it | p50 ms |") for line in lines
    )
    assert "| 3 | 1,500 | 4,500 | 1.29 | 0 |" in lines
    assert any(
        line.endswith("(-14%); 29,000 (event, group) pairs via a retry topic.") for line in lines
    )
    assert "| a slow group changes the fast one < 10 % | -14% | **no** |" in lines
    assert any(
        line.startswith("logistik's RSS over 10,000 events (sent at once): 100 MB at the start")
        for line in lines
    )


def test_groups_and_the_slow_group_are_compared_with_the_one_group_burst_of_their_round(
    tmp_path: Path,
) -> None:
    data = report()
    data["measurements"] = [m for m in data["measurements"] if m["phase"] not in ("groups", "slow")]
    data["measurements"] += [
        measurement("groups", "logistik", 1, 4_000.0, 400.0, groups=1, retried=0),
        measurement("groups", "logistik", 1, 1_000.0, 900.0, groups=5, retried=0),
        measurement("slow", "logistik", 1, 3_000.0, 400.0, retried=100),
        measurement("groups", "logistik", 2, 2_000.0, 400.0, groups=1, retried=0),
        measurement("groups", "logistik", 2, 600.0, 900.0, groups=5, retried=7),
        measurement("slow", "logistik", 2, 1_900.0, 400.0, retried=200),
    ]
    done = markdown(tmp_path, data)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Round 1: 5,000 calls/s against 4,000 (1.25); round 2: 3,000 against 2,000 (1.50).
    # Against the burst phase's median (3,500 events/s) they would have been 1.43 and 0.86.
    assert "| 1 | 3,000 | 3,000 | - (the reference) | 0 |" in lines
    assert "| 5 | 800 | 4,000 | 1.38 (1.25-1.50) | 7 |" in lines
    assert "| 5 groups: model calls/s ≥ 1 group's | 1.38 x | yes |" in lines
    # The fast group beside the slow one: -25 % in round 1, -5 % in round 2.
    assert any(
        line.endswith(
            "the fast group moved 2,450 events/s against 3,000 alone (-15%, -25% to -5%); "
            "300 (event, group) pairs via a retry topic (medians of 2 rounds)."
        )
        for line in lines
    )
    assert "| a slow group changes the fast one < 10 % | -15% | **no** |" in lines


def test_the_slow_group_is_also_compared_over_the_second_half_of_the_answers(
    tmp_path: Path,
) -> None:
    data = report()
    data["measurements"] = [m for m in data["measurements"] if m["phase"] not in ("groups", "slow")]
    data["measurements"] += [
        {**measurement("groups", "logistik", 1, 4_000.0, 400.0), "steady_events_per_s": 5_000.0},
        {**measurement("slow", "logistik", 1, 3_000.0, 400.0), "steady_events_per_s": 4_500.0},
        {**measurement("groups", "logistik", 2, 4_000.0, 400.0), "steady_events_per_s": 5_000.0},
        {**measurement("slow", "logistik", 2, 3_400.0, 400.0), "steady_events_per_s": 4_900.0},
    ]
    done = markdown(tmp_path, data)
    assert done.returncode == 0, done.stderr
    # Whole bursts: -25 % and -15 %; second halves: -10 % and -2 %. The goal stays on the whole.
    assert any(
        line.endswith(
            "against 4,000 alone (-20%, -25% to -15%); over the second half of its answers, once "
            "the burst's start is behind, -6%, -10% to -2% against the same half alone "
            "(medians of 2 rounds)."
        )
        for line in done.stdout.splitlines()
    )
    assert "| a slow group changes the fast one < 10 % | -20% | **no** |" in done.stdout


def test_the_steady_rate_is_taken_from_the_median_answer_to_the_last() -> None:
    # 1,000 answers in the first second, then 1,000 over the next four: the second half's pace.
    times = [n / 1000 for n in range(1000)] + [1 + n / 250 for n in range(1, 1001)]
    assert benchmark.steady_rate(times) == pytest.approx(250, rel=0.01)
    assert benchmark.steady_rate(times[: benchmark.STEADY_MIN_ANSWERS - 1]) is None


def test_markdown_of_a_missing_report_fails_with_its_path(tmp_path: Path) -> None:
    done = bench("--markdown", str(tmp_path / "none.json"))
    assert done.returncode != 0
    assert "none.json" in done.stderr


@pytest.fixture
def model_url(tmp_path: Path) -> Iterator[str]:
    """The benchmark's model server in a process of its own, as the benchmark starts it."""
    port = benchkit.free_port()
    argv = [sys.executable, str(BENCH / "model_server.py"), "--port", str(port)]
    model = benchkit.Child("the model server", argv, tmp_path / "model.log", tmp_path).start()
    try:
        asyncio.run(benchkit.wait_for_port(port, model))
        yield f"http://127.0.0.1:{port}/predict"
    finally:
        model.stop()


def requests_seen(model_url: str) -> int:
    """How many requests the benchmark's model server has answered (its GET /stats)."""
    stats_url = model_url.rsplit("/", 1)[0] + "/stats"
    with urllib.request.urlopen(stats_url, timeout=10) as answer:
        return int(json.load(answer)["requests"])


@pytest.mark.parametrize("rate", [None, 500.0], ids=["at-once", "paced"])
def test_the_direct_load_calls_the_model_with_every_event(
    model_url: str, rate: float | None
) -> None:
    argv = [sys.executable, str(BENCH / "load.py"), "http", "--url", model_url]
    argv += ["--client", "httptools", "--count", "300", "--concurrency", "8"]
    if rate is not None:
        argv += ["--rate", str(rate)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # Every event, after the client's warm-up of 4 calls per connection (8 * 4), and the GET
    # /stats that asks.
    assert requests_seen(model_url) == 300 + 8 * 4 + 1
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    if rate is not None:  # 300 events at 500/s take at least 0.6 s
        assert result["seconds"] >= 0.55


LOOP_EVENTS = 200


@pytest.mark.one_broker
@pytest.mark.parametrize(
    ("script", "model"),
    [
        ("plain_aiokafka.py", "--url"),
        ("plain_confluent.py", "--url"),
        ("plain_confluent.py", "--no-call"),
    ],
    ids=["aiokafka", "confluent", "kafka-alone"],
)
def test_a_loop_answers_every_event(
    servers: str, model_url: str, tmp_path: Path, script: str, model: str
) -> None:
    topic, results = unique("bench-events"), unique("bench-results")
    create_topics(servers, topic, results, partitions=2)
    maker = benchkit.EventMaker(seed=1)
    ids = [benchkit.event_id("loop", i) for i in range(LOOP_EVENTS)]
    produce(servers, topic, [maker.make(ident, i)[1] for i, ident in enumerate(ids)], spread=2)
    argv = [sys.executable, str(BENCH / script), "--bootstrap", servers, "--topic", topic]
    argv += ["--group", unique("bench-loop"), "--results", results, "--concurrency", "8"]
    argv += [model, model_url] if model == "--url" else [model]
    loop = benchkit.Child(script, argv, tmp_path / "loop.log", tmp_path).start()
    try:
        with TopicReader(servers, results) as reader:
            answers = reader.wait_for(results, LOOP_EVENTS, timeout_s=60)
    finally:
        loop.stop()
    # One answer per event, each the model's (its id, label and score), whoever made it.
    assert sorted(orjson.loads(a.value or b"")["id"] for a in answers) == sorted(ids)
    assert {orjson.loads(a.value or b"")["label"] for a in answers} == {"cat"}
    # Kafka alone calls nothing; the loops call the model once per event (and GET /stats).
    assert requests_seen(model_url) == (LOOP_EVENTS + 1 if model == "--url" else 1)

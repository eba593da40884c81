"""The front of `run --workers N` lists and exports every worker's partitions not fetched."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from logistik.observe.figures import Figures
from logistik.observe.metrics import metrics_registry
from logistik.process.workers import Peers, WorkerRole
from logistik.routing.registry import Registry
from tests.support.api_client import sample, sample_or_none


def stall(partition: int, waiting: int, for_s: int) -> dict[str, Any]:
    return {
        "topic": "detect",
        "partition": partition,
        "waiting": waiting,
        "for_s": for_s,
        "detail": f"detect[{partition}]: {waiting} record(s) not fetched for {for_s} s",
    }


def snapshot(stalls: list[dict[str, Any]], partitions: list[int]) -> dict[str, Any]:
    """What a worker tells the front, as far as partitions go."""
    return {"status": {"not_fetched": stalls}, "lag": [["detect", p, 0] for p in partitions]}


def test_the_front_shows_each_live_worker_s_stalls_beside_its_own(tmp_path: Path) -> None:
    peers = Peers(WorkerRole(0, 3, tmp_path), Figures(), Figures())
    now = time.monotonic()
    second = stall(2, 21, 70)
    peers.views[1].snapshot, peers.views[1].read_at = snapshot([second], [2, 3]), now
    # A worker the front has not read for an hour: its readiness check fails instead.
    peers.views[2].snapshot, peers.views[2].read_at = snapshot([stall(4, 5, 90)], [4]), now - 3600
    own = [stall(0, 3, 61)]
    assert peers.not_fetched(own) == [own[0], second]

    collectors = metrics_registry(
        Figures(),
        Registry(max_concurrency=1),
        lambda: peers.lag({("detect", 0): 0, ("detect", 1): 0}),
        lambda: peers.not_fetched(own),
    )
    text = generate_latest(collectors).decode()
    records = "logistik_consumer_not_fetched_records"
    seconds = "logistik_consumer_not_fetched_seconds"
    assert sample(text, records, topic="detect", partition="0") == 3
    assert sample(text, seconds, topic="detect", partition="0") == 61
    assert sample(text, records, topic="detect", partition="2") == 21
    assert sample(text, seconds, topic="detect", partition="2") == 70
    for fetched in ("1", "3"):  # consumed, fetched: present, at 0
        assert sample_or_none(text, seconds, topic="detect", partition=fetched) == 0
    assert 'partition="4"' not in text

"""Micro-batching end to end: a model that takes lists, each event accounted for on its own."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import (
    TopicReader,
    create_topics,
    event,
    produce,
    unique,
    wait_all_committed,
)
from tests.support.models import ModelServer, Reply, wait_until

pytestmark = pytest.mark.one_broker  # batching is the router's, not the broker's


class BatchModel:
    """Answers lists: the first request fails whole, `flaky` items once, `bad` ones for good."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sizes: list[int] = []
        self.calls: Counter[str] = Counter()

    def __call__(self, batch: Any, _count: int) -> Reply:
        assert isinstance(batch, list), "a batching model gets a JSON list"
        with self.lock:
            first = not self.sizes
            self.sizes.append(len(batch))
            attempts = []
            for item in batch:
                self.calls[item["id"]] += 1
                attempts.append(self.calls[item["id"]])
        if first:
            return Reply(503, {"error": "warming up"})
        answers: list[Any] = []
        for item, attempt in zip(batch, attempts, strict=True):
            if item["verb"] == "skip":
                answers.append(None)
            elif item["verb"] == "bad":
                answers.append({"logistik": {"status": 400, "error": "unreadable"}})
            elif item["verb"] == "flaky" and attempt == 1:
                answers.append({"logistik": {"status": 503, "error": "try again"}})
            else:
                answers.append({"id": item["id"], "label": "cat"})
        return Reply(200, answers)


def test_every_event_of_a_batch_is_answered_ignored_retried_or_failed_on_its_own(
    servers: str,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    topic = unique("events")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    model = BatchModel()
    server = model_server(model)
    verbs = ["detect"] * 40 + ["skip"] * 6 + ["bad"] * 4 + ["flaky"] * 10
    sent = [event(verb) for verb in verbs]
    fields = {"batch_max_size": 8, "batch_max_wait_ms": 20, "retries": 3}
    config = make_config(
        servers,
        [handler("m", topic, server.port, **fields)],
        routing={"backoff_base_s": 0.05, "backoff_cap_s": 0.2},
    )
    with TopicReader(servers, f"{topic}-results", f"{topic}-failed") as reader:
        running = router(config)
        produce(servers, topic, sent)
        wait_all_committed(servers, config["kafka"]["group_id"], topic, len(sent))
        wait_until(running.settled, 30, "retries to be handled")
        answerable = [e["id"] for e in sent if e["verb"] in ("detect", "flaky")]
        results = reader.wait_for(f"{topic}-results", len(answerable))
        failed = reader.wait_for(f"{topic}-failed", 4)
    answered = Counter(r.json()["id"] for r in results)
    assert answered == Counter(answerable)  # each once, the flaky ones after their retry
    assert all(r.json()["label"] == "cat" for r in results)
    bad = {e["id"] for e in sent if e["verb"] == "bad"}
    assert {r.json()["id"] for r in failed} == bad
    assert {r.headers["logistik.reason"] for r in failed} == {"rejected"}
    assert {r.headers["logistik.error"] for r in failed} == {"HTTP 400: unreadable"}
    # Batched: fewer requests than events, none over the size.
    assert len(model.sizes) < len(sent) / 2 and max(model.sizes) <= 8
    # Only what failed was sent again: an event answered or ignored at its first try, outside
    # the request that failed whole, reached the model once.
    first_request = model.sizes[0]
    sent_twice = {i for i, n in model.calls.items() if n > 1}
    flaky = {e["id"] for e in sent if e["verb"] == "flaky"}
    assert len(sent_twice - flaky) <= first_request
    assert all(model.calls[i] <= 2 for i in model.calls)

"""The UI of `logistik run --workers 2`: the front shows both workers and their sum."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.support.harness import RouterProcess, handler, make_config
from tests.support.kafkatools import create_topics, event, produce, unique
from tests.support.models import ModelServer, wait_until
from tests.support.ui_helpers import row, screenshot

pytestmark = pytest.mark.one_broker  # the subject is the web UI, not the broker


def test_the_front_shows_every_worker_and_counts_the_calls_of_both(
    servers: str,
    model_server: Callable[..., ModelServer],
    router_process: Callable[[dict[str, Any]], RouterProcess],
    page: Page,
) -> None:
    topic = unique("ui")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed", partitions=4)
    model = model_server()
    config = make_config(servers, [handler("alpha", topic, model.port, hostname="gpu-1")])
    config["workers"] = 2
    config["event_log_level"] = "info"  # each answer's line names the worker that published it
    pool = router_process(config)
    base = f"http://127.0.0.1:{config['web']['port']}"
    wait_until(lambda: pool.workers_assigned(2), 60, "partitions for both workers")
    produce(servers, topic, [event(actor=f"actor-{i}") for i in range(40)], spread=4)
    page.goto(base)
    expect(page.locator("#top-status")).to_contain_text("2 workers", timeout=60_000)
    expect(page.locator("#top-status")).to_contain_text("Consuming")
    alpha = page.locator(row(page, "alpha-gpu-1-model-0"))
    expect(alpha.locator('td[data-label="Calls"]')).to_have_text("40", timeout=60_000)
    screenshot(page, "models-two-workers")
    pool.signal(signal.SIGTERM)
    assert pool.wait(60) == 0, pool.log()
    # Both workers had events: the 40 calls shown are the sum of two processes' figures.
    log = pool.log()
    assert "[worker 0] logistik.events" in log and "[worker 1] logistik.events" in log

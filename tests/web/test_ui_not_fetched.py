"""The UI says which partition's records are not fetched, and why, until they come again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from playwright.sync_api import Page, expect

from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import create_topics, event, open_transaction, unique
from tests.support.models import ModelServer, wait_until
from tests.support.ui_helpers import WAIT_MS, screenshot


# An open transaction is how a real broker holds records from a consumer: Apache Kafka's.
@pytest.mark.brokers("kafka")
def test_a_banner_names_the_partition_held_by_an_open_transaction(
    servers: str,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
    page: Page,
) -> None:
    topic = unique("ui-held")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    model = model_server()
    running = router(
        make_config(servers, [handler("m", topic, model.port)], kafka={"fetch_stalled_after_s": 2})
    )
    hung = open_transaction(servers, topic, 0, orjson.dumps(event()))
    page.goto(f"http://127.0.0.1:{running.config.web.port}")
    banner = page.locator('[data-banner="not-fetched"]')
    expect(banner).to_contain_text(
        f"Records not fetched on 1 partition: {topic}[0]: 1 record(s) from offset 0",
        timeout=WAIT_MS,
    )
    expect(banner).to_contain_text("a transaction left open since offset 0 holds them")
    screenshot(page, "records-not-fetched")
    hung.commit_transaction(30)
    wait_until(lambda: model.count == 1, what="the event once its transaction ended")
    expect(banner).to_have_count(0, timeout=WAIT_MS)

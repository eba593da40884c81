"""A rollout in a real browser: started from the model's detail page, its timeline advancing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.support.harness import handler
from tests.support.kafkatools import create_topics, unique
from tests.support.models import ModelServer, wait_until
from tests.support.rollouts import EventFlow
from tests.support.ui_helpers import log_in_with_token, screenshot
from tests.web.test_ui import TOKEN, Router, start, web

pytestmark = pytest.mark.one_broker  # the subject is the web UI, not the broker


def test_a_rollout_started_from_the_detail_page_advances_on_its_timeline(
    servers: str, model_server: Callable[..., ModelServer], router: Router, page: Page
) -> None:
    topic = unique("ui-rollout")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    production, candidate = model_server(), model_server()
    running = start(
        servers,
        router,
        [
            handler("face", topic, production.port, version="1"),
            handler("face", topic, candidate.port, version="2", node="1", model_type="canary"),
        ],
    )
    canary = "face-127.0.0.1-canary-1"
    with EventFlow(servers, topic, per_s=150):
        wait_until(lambda: production.count >= 100, 30, "production to answer the flow")
        page.goto(f"{web(running)}/#/handler/{canary}")
        log_in_with_token(page, TOKEN)
        form = page.locator("#rollout-form")
        form.get_by_label("Steps (% of events)").fill("50,100")
        form.get_by_label("Canary answers per step").fill("40")
        form.get_by_label("Step lasts at least").fill("1s")
        form.get_by_label("Error rate may rise by (points %)").fill("20")
        form.get_by_label("p99 may be (times production's)").fill("3")
        form.get_by_label("Median may be (times production's)").fill("3")
        form.get_by_role("button", name="Start rollout").click()
        status = page.locator("#rollout-status")
        expect(status).to_have_text("running")
        expect(page.locator(".rollout-step.current")).to_have_text("50%")
        timeline = page.locator(".rollout-timeline")
        expect(timeline.locator('li[data-outcome="start"]')).to_have_count(1)
        expect(timeline.locator('li[data-outcome="advance"]')).to_have_count(1, timeout=45_000)
        expect(page.locator(".rollout-chart")).to_have_count(2)
        screenshot(page, "rollout-advancing")
        expect(status).to_have_text("promoted", timeout=45_000)
    promoted = timeline.locator('li[data-outcome="promote"]')
    expect(promoted).to_have_count(1)
    expect(promoted).to_contain_text("every check passed")
    promoted.get_by_text("Figures").click()
    expect(promoted.locator('tr[data-side="canary"]')).to_be_visible()
    screenshot(page, "rollout-promoted")

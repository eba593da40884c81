"""`logistik demo` from the browser: its login link, then promote the canary and query a model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.demo import DemoProcess
from tests.support.ui_helpers import row, screenshot

CANARY = "digits-svm-demo-canary-0"
PRODUCTION = "digits-nb-demo-model-0"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoProcess]:
    """A running demo, stopped with Ctrl-C after the test."""
    with DemoProcess(tmp_path, rate=20) as running:
        yield running
        assert running.interrupt() == 0, running.log()[-3000:]


def test_the_login_link_lets_a_newcomer_promote_the_canary_and_query_a_model(
    demo: DemoProcess, page: Page
) -> None:
    page.goto(demo.login_url)
    expect(page.locator("#account")).to_contain_text("Log out")
    # The token leaves the address at once: not in history, not in a bookmark.
    assert "login=" not in page.url
    canary = page.locator(row(page, CANARY))
    expect(canary.locator('td[data-label="Calls"]')).to_have_text(
        re.compile(r"^[1-9]"), timeout=60_000
    )
    expect(canary.locator('td[data-label="Type"]')).to_contain_text("20% set")
    expect(canary.locator('td[data-label="Type"]')).to_contain_text("measured")
    decoy = page.locator(row(page, "digits-knn-demo-decoy-0"))
    expect(decoy.locator('td[data-label="Type"]')).to_contain_text("agrees")
    expect(canary.locator('td[data-label="State"]')).to_have_text("active")
    screenshot(page, "demo-models-desktop")

    page.goto(f"{demo.base_url}/#/handler/{CANARY}")
    page.get_by_role("button", name="Promote").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Promote digits-svm").click()
    expect(page.locator("#action-result")).to_contain_text("digits-svm: promoted to production")
    expect(page.locator(".detail-head .type")).to_contain_text("model")
    # Its node id still says canary: the page says what it is now, and why the id stays.
    expect(page.locator(".detail-head")).to_contain_text("now model")
    expect(page.locator("#identity-note")).to_contain_text("a promotion changes the type")

    page.goto(f"{demo.base_url}/#/query?node={PRODUCTION}")
    textarea = page.get_by_label("Event (JSON)")
    # The editor starts from the newest real event on the topic: 64 pixels of a digit.
    expect(page.locator("#query-origin")).to_contain_text("newest event on digits")
    expect(textarea).to_have_value(re.compile('"content"'))
    page.locator("#query-send").click()
    expect(page.locator("#query-outcome")).to_have_text("ok")
    expect(page.locator("#query-answer")).to_contain_text('"label"')
    screenshot(page, "demo-query-desktop")

"""The web UI in a real browser, against a running router with real model servers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from logistik.control.handler_service import HandlerService
from logistik.control.store import HandlerRecord
from logistik.kafka.embedded import free_port
from tests.support.harness import RouterThread, handler, make_config, on_store
from tests.support.kafkatools import create_topics, event, produce, unique
from tests.support.models import ModelServer, Reply
from tests.support.ui_helpers import (
    DESKTOP,
    PHONE,
    WAIT_MS,
    log_in_with_token,
    off_loop,
    row,
    screenshot,
)

pytestmark = pytest.mark.one_broker  # the subject is the web UI, not the broker

TOKEN = "test-token"
Router = Callable[[dict[str, Any]], RouterThread]


def web(running: RouterThread) -> str:
    """The router's UI address."""
    return f"http://127.0.0.1:{running.config.web.port}"


def start(servers: str, router: Router, handlers: list[dict[str, Any]]) -> RouterThread:
    """A router whose UI accepts the test token."""
    return router(make_config(servers, handlers, web={"auth": {"tokens": [TOKEN]}}))


def test_models_table_shows_models_and_their_figures(
    servers: str, model_server: Callable[..., ModelServer], router: Router, page: Page
) -> None:
    topic = unique("ui")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    good = model_server()
    bad = model_server(lambda _e, _n: Reply(404, {"error": "no such object"}))
    running = start(
        servers,
        router,
        [
            handler("alpha", topic, good.port, version="1.2.0", hostname="gpu-1"),
            handler("beta", topic, bad.port, hostname="gpu-2"),
            handler(
                "alpha",
                topic,
                good.port,
                version="1.3.0",
                hostname="gpu-3",
                model_type="canary",
                traffic=0.0,
            ),
        ],
    )
    produce(servers, topic, [event() for _ in range(6)])
    page.goto(web(running))
    alpha = page.locator(row(page, "alpha-gpu-1-model-0"))
    beta = page.locator(row(page, "beta-gpu-2-model-0"))
    expect(alpha.locator('td[data-label="Calls"]')).to_have_text("6", timeout=30_000)
    expect(alpha.locator('td[data-label="OK / err / t-o"]')).to_have_text("6/0/0")
    expect(alpha.locator('td[data-label="State"]')).to_have_text("active")
    expect(alpha.locator('td[data-label="Type"]')).to_have_text("model")
    expect(alpha.locator('td[data-label="Hostname"]')).to_have_text("gpu-1")
    expect(alpha.locator('td[data-label="Port"]')).to_have_text(str(good.port))
    expect(alpha.locator('td[data-label="uWSGI"]')).to_have_text("no stats")
    expect(alpha.locator('td[data-label="p50"]')).to_contain_text("ms")
    expect(beta.locator('td[data-label="OK / err / t-o"]')).to_have_text("0/6/0")
    expect(beta.locator('td[data-label="Last error"]')).to_contain_text("HTTP 404")
    canary = page.locator(row(page, "alpha-gpu-3-canary-0"))
    expect(canary.locator('td[data-label="Type"]')).to_have_text("canary0% set")
    expect(page.locator("#top-status")).to_contain_text("Consuming")

    page.goto(f"{web(running)}/#/failures")
    expect(page.locator("#failures-table tbody tr")).to_have_count(6)
    expect(page.locator("#failures-table tbody tr").first).to_contain_text("rejected")
    shoot_every_page(page, web(running), "alpha-gpu-1-model-0", "alpha-gpu-3-canary-0")


def shoot_every_page(page: Page, base: str, node_id: str, canary: str) -> None:
    """Screenshots of each page on a laptop and on a phone, for people to look at."""
    pages = {
        "models": ("/", "#models-table tbody tr"),
        "detail": (f"/#/handler/{node_id}", ".chart svg"),
        "hosts": ("/#/hosts", ".host-card"),
        "flow": ("/#/flow", ".lane"),
        "failures": ("/#/failures", "#failures-table"),
        "query": (f"/#/query?node={canary}", "#query-model option:checked"),
    }
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        for name, (path, ready) in pages.items():
            page.goto(base + path)
            expect(page.locator(ready).first).to_be_attached()
            page.locator("#main").get_by_text("Loading").first.wait_for(state="detached")
            screenshot(page, f"{name}-{size}")
    page.set_viewport_size(DESKTOP)


def test_filters_narrow_the_rows(
    servers: str, model_server: Callable[..., ModelServer], router: Router, page: Page
) -> None:
    first, second = unique("ui-a"), unique("ui-b")
    model = model_server()
    running = start(
        servers,
        router,
        [
            handler("red", first, model.port, hostname="host-1"),
            handler("red", first, model.port, hostname="host-2", model_type="decoy"),
            handler("green", second, model.port, hostname="host-2"),
        ],
    )
    page.goto(web(running))
    rows = page.locator("#models-table tbody tr")
    expect(rows).to_have_count(3)
    page.get_by_label("Topic").select_option(second)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("green")
    expect(page.locator(".count")).to_have_text("1 of 3 models")
    page.get_by_label("Topic").select_option("")
    page.get_by_label("Type").select_option("decoy")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("host-2")
    page.get_by_role("button", name="Clear filters").click()
    expect(rows).to_have_count(3)
    page.get_by_role("searchbox").fill("host-2")
    expect(rows).to_have_count(2)
    page.get_by_label("Host").select_option("host-1")
    expect(page.locator(".empty")).to_contain_text("No model matches")
    page.get_by_label("Host").select_option("")
    assert "q=host-2" in page.url
    page.reload()  # the filters live in the address
    expect(page.get_by_role("searchbox")).to_have_value("host-2")
    expect(rows).to_have_count(2)


def test_promote_after_confirmation_changes_the_state_shown(
    servers: str, model_server: Callable[..., ModelServer], router: Router, page: Page
) -> None:
    topic = unique("ui")
    model = model_server()
    running = start(
        servers,
        router,
        [
            handler("gamma", topic, model.port, hostname="old", version="1"),
            handler(
                "gamma",
                topic,
                model.port,
                hostname="new",
                version="2",
                model_type="canary",
                traffic=0.1,
            ),
        ],
    )
    page.goto(f"{web(running)}/#/handler/gamma-new-canary-0")
    expect(page.locator(".detail-head")).to_contain_text("canary")
    expect(page.locator(".actions")).to_contain_text("Log in with write access")
    log_in_with_token(page, TOKEN)
    page.get_by_role("button", name="Set traffic").click()
    page.get_by_label("Traffic share (%)").fill("25")
    page.locator("#confirm-dialog").get_by_role("button", name="Set traffic").click()
    expect(page.locator("#action-result")).to_contain_text("gamma: traffic set to 25%")
    expect(page.locator(".detail-head .type")).to_have_text("canary25% set")
    page.get_by_role("button", name="Promote").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Promote gamma?")
    expect(dialog).to_contain_text("gamma-new-canary-0")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(page.locator(".detail-head")).to_contain_text("canary")

    page.get_by_role("button", name="Promote").click()
    screenshot(page, "confirm-desktop", full_page=False)
    dialog.get_by_role("button", name="Promote gamma").click()
    expect(page.locator("#action-result")).to_contain_text("gamma: promoted to production")
    expect(page.locator(".detail-head .type")).to_have_text("model")
    screenshot(page, "detail-logged-in-desktop")
    page.goto(web(running))
    old = page.locator(row(page, "gamma-old-model-0"))
    expect(old.locator('td[data-label="Type"]')).to_have_text("canary0% set")
    expect(
        page.locator(row(page, "gamma-new-canary-0")).locator('td[data-label="Type"]')
    ).to_have_text("model")

    page.goto(f"{web(running)}/#/handler/gamma-new-canary-0")
    page.get_by_role("button", name="Demote").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Demote gamma").click()
    expect(page.locator("#action-result")).to_contain_text("Could not demote gamma")
    expect(page.locator("#action-result")).to_contain_text("last active production instance")


def test_query_page_shows_the_models_answer(
    servers: str, model_server: Callable[..., ModelServer], router: Router, page: Page
) -> None:
    topic = unique("ui")
    model = model_server(lambda e, _n: Reply(200, {"id": e.get("id"), "label": "cat", "p": 0.97}))
    running = start(servers, router, [handler("delta", topic, model.port)])
    page.goto(f"{web(running)}/#/query?node=delta-127.0.0.1-model-0")
    log_in_with_token(page, TOKEN)
    expect(page.locator("#query-model")).to_have_value("delta-127.0.0.1-model-0")
    textarea = page.get_by_label("Event (JSON)")
    textarea.fill('{"id": "q-1", "verb": ')
    expect(page.locator("#query-validation")).to_contain_text("Not valid JSON")
    expect(page.locator("#query-send")).to_be_disabled()
    textarea.fill("[1, 2]")
    expect(page.locator("#query-validation")).to_contain_text("must be a JSON object")
    textarea.fill('{"id": "q-1", "verb": "detect", "actor": {"id": "me"}}')
    expect(page.locator("#query-send")).to_be_enabled()
    page.locator("#query-send").click()
    expect(page.locator("#query-outcome")).to_have_text("ok")
    expect(page.locator("#query-status")).to_have_text("200")
    answer = page.locator("#query-answer")
    expect(answer).to_contain_text('"label": "cat"')
    expect(answer).to_contain_text('"id": "q-1"')
    screenshot(page, "query-answer-desktop")
    assert model.ids() == ["q-1"]


def test_live_refresh_shows_a_model_added_while_the_page_is_open(
    servers: str, model_server: Callable[..., ModelServer], router: Router, page: Page
) -> None:
    topic = unique("ui")
    model = model_server()
    running = start(servers, router, [handler("epsilon", topic, model.port)])
    page.goto(web(running))
    rows = page.locator("#models-table tbody tr")
    expect(rows).to_have_count(1)
    page.get_by_label("Topic").select_option(topic)
    search = page.get_by_role("searchbox")
    search.fill("eps")
    page.evaluate("window.notReloaded = true")

    async def add(service: HandlerService) -> HandlerRecord:
        return await service.add(handler("epsilon-two", topic, model.port, hostname="late"))

    off_loop(on_store, running.config.database.url, add)
    expect(rows).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator(row(page, "epsilon-two-late-model-0"))).to_contain_text("late")
    assert page.evaluate("window.notReloaded") is True
    expect(search).to_have_value("eps")
    expect(search).to_be_focused()
    expect(page.get_by_label("Topic")).to_have_value(topic)
    expect(page.locator(".count")).to_have_text(re.compile("2 of 2 models"))


def test_an_unreachable_model_is_marked_with_its_error_and_charts_change_span(
    servers: str, model_server: Callable[..., ModelServer], router: Router, page: Page
) -> None:
    topic = unique("ui")
    model = model_server()
    nobody = free_port()
    running = start(
        servers,
        router,
        [handler("here", topic, model.port), handler("gone", topic, nobody, hostname="h2")],
    )
    page.goto(web(running))
    state = page.locator(row(page, "gone-h2-model-0")).locator('td[data-label="State"]')
    expect(state).to_contain_text("unreachable")
    expect(state.locator(".health-mark")).to_have_attribute(
        "title", re.compile(f"cannot connect to 127.0.0.1:{nobody}: Connection refused")
    )
    gone = page.locator(row(page, "gone-h2-model-0"))
    expect(gone.locator('td[data-label="Last error"]')).to_contain_text("cannot connect")
    here = page.locator(row(page, "here-127.0.0.1-model-0"))
    expect(here.locator('td[data-label="State"]')).to_have_text("active")
    expect(page.locator("#top-status")).to_contain_text("1 unreachable")

    page.goto(f"{web(running)}/#/handler/gone-h2-model-0")
    expect(page.locator(".health")).to_contain_text("no: cannot connect")
    # A model logistik has not called yet: charts over the last 5 minutes, 10 s a bar.
    expect(page.locator(".chart").first).to_contain_text("calls per 10 s")
    page.get_by_role("button", name="24 hours").click()
    expect(page.locator(".chart").first).to_contain_text("calls per hour")
    assert "span=24h" in page.url

"""Fixtures of the web tests: one Chromium per module, a fresh page per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.support.ui_helpers import DESKTOP, WAIT_MS, launch


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module's tests."""
    with sync_playwright() as playwright:
        running = launch(playwright)
        yield running
        running.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context on a laptop-sized screen; fails the test on a script error."""
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            errors.append(message.text)

    opened.on("console", console)
    yield opened
    context.close()
    assert not errors, f"errors in the page: {errors}"

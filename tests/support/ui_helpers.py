"""Browser helpers for the web UI tests: Debian's Chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import Browser, Page, Playwright, ViewportSize, expect

from tests.support.system import CHROMIUM, needs

T = TypeVar("T")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
DESKTOP = ViewportSize(width=1366, height=800)
PHONE = ViewportSize(width=390, height=844)
WAIT_MS = 20_000  # long enough for the router's store refresh and the UI's next poll


def launch(playwright: Playwright) -> Browser:
    """Start Chromium; a missing browser is one clear error."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(needs(f"Chromium at {CHROMIUM} (the UI tests drive it)", "chromium"))
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def screenshot(page: Page, name: str, full_page: bool = True) -> Path:
    """Save what the page shows now as test-artifacts/ui/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def row(page: Page, node_id: str) -> str:
    """The selector of one handler's row in the models table."""
    return f'#models-table tbody tr[data-node-id="{node_id}"]'


def log_in_with_token(page: Page, token: str) -> None:
    """Log in through the header's login dialog with an API token."""
    page.get_by_role("button", name="Log in").first.click()
    dialog = page.locator("#login-dialog")
    dialog.get_by_role("tab", name="Token").click()
    dialog.get_by_label("API token").fill(token)
    dialog.locator("#login-token").get_by_role("button", name="Log in").click()
    expect(page.locator("#account")).to_contain_text("Log out", timeout=WAIT_MS)


def off_loop(function: Callable[..., T], *args: Any) -> T:
    """Call a function that runs its own event loop (Playwright's sync API keeps one running)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()

"""Marks every test with its tier and the services it needs, from its folder and fixtures.

`pytest -m unit` runs the fast tier alone; `pytest -m "not browser"` skips Chromium, and so on.
"""

from __future__ import annotations

import pytest

TIERS = ("unit", "integration", "web")
SERVICES = {
    "kafka": ("broker", "servers", "router", "router_process"),
    "postgres": ("postgres", "database_url"),
    "redis": ("redis_server",),
    "browser": ("browser", "page"),
    "uwsgi": ("uwsgi_model",),
}
MARKERS = {
    "unit": "no services: runs in seconds",
    "integration": "real broker, model servers, databases",
    "web": "the REST API and the UI",
    "kafka": "needs a Kafka broker (started by the tests)",
    "postgres": "needs PostgreSQL (started by the tests)",
    "redis": "needs redis-server (started by the tests)",
    "browser": "needs Chromium (driven by Playwright)",
    "uwsgi": "needs uWSGI",
    "slow": "takes more than a few seconds on its own",
}


def pytest_configure(config: pytest.Config) -> None:
    """Declare the markers so that `--strict-markers` and `pytest --markers` know them."""
    for name, what in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Add tier and service markers to every collected test."""
    for item in items:
        parts = item.path.parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(tier)
        fixtures = set(getattr(item, "fixturenames", ()))
        for marker, needs in SERVICES.items():
            if fixtures.intersection(needs):
                item.add_marker(marker)

"""A tiny model served by uWSGI in tests: answers each event with its id (standard library only)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any


def application(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    """The WSGI entry point uWSGI calls."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    event = json.loads(environ["wsgi.input"].read(length) or b"{}")
    body = json.dumps({"id": event.get("id"), "answer": "uwsgi"}).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]

"""Log set-up: one line per record as text or JSON, with repeated warnings rate-limited."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

EVENTS_LOGGER = "logistik.events"  # one line per (event, group) outcome
# Attributes a record may carry for JSON logs (passed with `extra=`).
EVENT_FIELDS = ("event_id", "topic", "group", "node_id", "outcome", "reason")


class RateLimit(logging.Filter):
    """Lets through at most `burst` warnings or errors of one message template per window.

    At the end of a window a line says how many were held back, so nothing goes unnoticed.
    """

    def __init__(self, burst: int = 10, window_s: float = 60.0) -> None:
        super().__init__()
        self._burst = burst
        self._window_s = window_s
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to emit the record."""
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        window = self._seen.get(key)
        if window is None or now - window[0] >= self._window_s:
            held = int(window[2]) if window else 0
            self._seen[key] = [now, 1, 0]
            if held:
                record.msg = (
                    f"{record.msg} ({held} similar line(s) held back in the last "
                    f"{self._window_s:g} s)"
                )
            return True
        window[1] += 1
        if window[1] <= self._burst:
            return True
        window[2] += 1
        return False


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any event fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def setup_logging(level: str, json_lines: bool = False) -> None:
    """Log to stderr at `level`, as text or JSON lines, rate-limiting repeated warnings."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter that says nothing about events.
    for name in ("alembic", "aiohttp.access", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)


def safe_url(url: str) -> str:
    """A URL reduced to scheme and host, for logs (webhook URLs carry their secret in the path)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/…"

"""Log set-up: one line per record as text or JSON; repeated warnings held back, secrets masked."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

EVENTS_LOGGER = "logistik.events"  # one line per (event, group) outcome
MASK = "***"
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@")
_PLAIN = logging.Formatter()
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


class SecretMask(logging.Filter):
    """Replaces every known secret, and any URL's password, in a record with ***.

    The message, its arguments and the traceback are masked, whatever logged them (a library
    quoting a URL in an error included), before any formatter sees the record.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these too (the longest first, so a secret holding another is masked whole)."""
        known = {*self._secrets, *(s for s in secrets if s)}
        self._secrets = tuple(sorted(known, key=len, reverse=True))

    def mask(self, text: str) -> str:
        """The text with every secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _URL_PASSWORD.sub(r"\1" + MASK + "@", text) if "://" in text else text

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place; never drops it."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit: the handler reports it
            return True
        record.msg, record.args = self.mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


SECRETS = SecretMask()  # what setup_logging's handler masks; `mask_secrets` adds to it


def mask_secrets(secrets: Iterable[str]) -> None:
    """Never let these values reach a log line (the config's tokens, passwords, keys, URLs)."""
    SECRETS.add(secrets)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any event fields."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker  # the worker of `run --workers N` that logs, None: the only one

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            document["worker"] = self._worker
        for name in EVENT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


def setup_logging(
    level: str, json_lines: bool = False, worker: int | None = None, event_level: str | None = None
) -> None:
    """Log to stderr at `level`, as text or JSON lines, rate-limiting warnings, masking secrets.

    The per-event lines (EVENTS_LOGGER) follow `event_level` when given, whatever `level` is.
    A worker of `run --workers N` names itself in each line.
    """
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(worker))
    else:
        who = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s {who}%(name)s: %(message)s")
        )
    handler.addFilter(RateLimit())
    handler.addFilter(SECRETS)  # after RateLimit, which groups records by their template
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if event_level is not None:
        logging.getLogger(EVENTS_LOGGER).setLevel(event_level.upper())
    # Library chatter that says nothing about events.
    for name in ("alembic", "aiohttp.access", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)


def safe_url(url: str) -> str:
    """A URL reduced to scheme and host, for logs (webhook URLs carry their secret in the path)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/…"

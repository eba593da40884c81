"""Webhook alerts (Slack/Mattermost-compatible) when events exhaust their retries."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp

from logistik.config import WebhookConfig
from logistik.handler import Handler

logger = logging.getLogger(__name__)


@dataclass
class _GroupAlerts:
    last_sent: float = float("-inf")
    suppressed: int = 0
    handlers: dict[str, Handler] = field(default_factory=dict)


class Alerter:
    """Sends at most one alert per group per interval, counting the events it held back."""

    def __init__(self, config: WebhookConfig, session: aiohttp.ClientSession) -> None:
        self._config = config
        self._session = session
        self._groups: dict[str, _GroupAlerts] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def retries_exhausted(
        self, group_id: str, topic: str, handlers: list[Handler], event_id: str, error: str
    ) -> None:
        """Report an event that exhausted its retries; sending happens in the background."""
        if not self._config.url:
            return
        state = self._groups.setdefault(f"{topic}/{group_id}", _GroupAlerts())
        for handler in handlers:
            state.handlers[handler.node_id] = handler
        now = time.monotonic()
        if now - state.last_sent < self._config.interval_s:
            state.suppressed += 1
            return
        text = render_alert(
            group_id, topic, list(state.handlers.values()), event_id, error, state.suppressed
        )
        state.last_sent, state.suppressed, state.handlers = now, 0, {}
        task = asyncio.create_task(self._post(text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, text: str) -> None:
        assert self._config.url is not None
        try:
            async with self._session.post(
                self._config.url,
                json={"text": text, "username": "logistik"},
                timeout=aiohttp.ClientTimeout(total=self._config.timeout_s),
            ) as response:
                if response.status >= 300:
                    logger.warning("webhook %s answered HTTP %d", self._config.url, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning(
                "webhook %s unreachable: %s", self._config.url, exc or type(exc).__name__
            )

    async def drain(self) -> None:
        """Wait for alerts still being sent."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def render_alert(
    group_id: str,
    topic: str,
    handlers: list[Handler],
    event_id: str,
    error: str,
    suppressed: int,
) -> str:
    """Markdown text with a table of the handlers that failed."""
    lines = [
        f"#### :red_circle: logistik: model `{group_id}` failed an event of `{topic}`",
        f"Event `{event_id}` exhausted its retries: {error}",
    ]
    if suppressed:
        lines.append(f"{suppressed} more event(s) failed since the last alert.")
    lines += ["", "| name | node | endpoint | port |", "|---|---|---|---|"]
    lines += [f"| {h.name} | {h.node_id} | {h.endpoint} | {h.port} |" for h in handlers]
    return "\n".join(lines)

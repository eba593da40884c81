"""Webhook alerts: critical when a model fails events, OK when it recovers; one per model per
interval, never one per event. Payloads for Mattermost (markdown table), Slack, or a template.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from logistik.config import WebhookConfig
from logistik.handler import Handler
from logistik.observe.logs import safe_url

logger = logging.getLogger(__name__)

CRITICAL, OK = "critical", "ok"


@dataclass
class GroupAlert:
    """The alert state of one model (a group of one topic)."""

    topic: str
    group_id: str
    status: str = OK
    sent_status: str = OK
    last_sent: float = float("-inf")
    failed_events: int = 0
    last_error: str = ""
    last_event_id: str = ""
    handlers: dict[str, Handler] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class Alerter:
    """Tracks every model's alert state and posts state changes to the webhook."""

    def __init__(self, config: WebhookConfig, session: aiohttp.ClientSession) -> None:
        self._config = config
        self._session = session
        self._groups: dict[tuple[str, str], GroupAlert] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.failing_after = config.failing_after

    def failed(
        self, topic: str, group_id: str, handlers: list[Handler], event_id: str, error: str
    ) -> None:
        """A model failed an event for good (retries exhausted), or (no event id) keeps failing."""
        if not self._config.url:
            return
        state = self._groups.setdefault((topic, group_id), GroupAlert(topic, group_id))
        state.status = CRITICAL
        state.failed_events += 1 if event_id else 0
        state.last_error, state.last_event_id = error, event_id
        state.handlers.update({h.node_id: h for h in handlers})
        self._consider(state)

    def recovered(self, topic: str, group_id: str) -> None:
        """A model answered again; cheap when it was not failing."""
        state = self._groups.get((topic, group_id))
        if state is None or state.status == OK:
            return
        state.status = OK
        self._consider(state)

    def _consider(self, state: GroupAlert) -> None:
        """Send now if the status differs from what was sent and the interval allows it."""
        if state.status == state.sent_status or state.timer is not None:
            return
        wait_s = state.last_sent + self._config.interval_s - time.monotonic()
        if wait_s > 0:
            state.timer = asyncio.get_running_loop().call_later(wait_s, self._due, state)
            return
        self._send(state)

    def _due(self, state: GroupAlert) -> None:
        state.timer = None
        if state.status != state.sent_status:
            self._send(state)

    def _send(self, state: GroupAlert) -> None:
        payload = render(self._config, state)
        state.sent_status, state.last_sent = state.status, time.monotonic()
        if state.status == OK:
            state.failed_events, state.handlers = 0, {}
        self._post_soon(payload)

    def rolled_back(self, topic: str, group_id: str, node_id: str, why: str) -> None:
        """Post at once that a rollout rolled its canary back: one message per rollback."""
        if not self._config.url:
            return
        self._post_soon(render_rollback(self._config, topic, group_id, node_id, why))

    def _post_soon(self, payload: str) -> None:
        task = asyncio.create_task(self._post(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, payload: str) -> None:
        assert self._config.url is not None
        where = safe_url(self._config.url)
        try:
            async with self._session.post(
                self._config.url,
                data=payload,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self._config.timeout_s),
            ) as response:
                if response.status >= 300:
                    logger.warning("webhook %s answered HTTP %d", where, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("webhook %s unreachable: %s", where, exc or type(exc).__name__)

    async def drain(self) -> None:
        """Wait for alerts still being sent; pending ones are dropped at exit."""
        for state in self._groups.values():
            if state.timer is not None:
                state.timer.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def render(config: WebhookConfig, state: GroupAlert) -> str:
    """The JSON body posted for a state change."""
    critical = state.status == CRITICAL
    title = (
        f"logistik: model {state.group_id} on {state.topic} is failing"
        if critical
        else f"logistik: model {state.group_id} on {state.topic} recovered"
    )
    last = f"event {state.last_event_id}: " if state.last_event_id else ""
    lines = (
        [f"{state.failed_events} event(s) failed so far; last error: {last}{state.last_error}"]
        if critical
        else ["It answers again."]
    )
    rows = [(h.name, h.node_id, h.endpoint, str(h.port)) for h in state.handlers.values()]
    table = (
        "\n".join(
            [
                "| name | node | endpoint | port |",
                "|---|---|---|---|",
                *(f"| {' | '.join(r)} |" for r in rows),
            ]
        )
        if rows
        else ""
    )
    text = "\n".join(
        [f"#### {':red_circle:' if critical else ':white_check_mark:'} {title}", *lines, "", table]
    ).strip()
    if config.format == "slack":
        # Slack does not draw markdown tables: the handlers go in a code block.
        listing = "\n".join("  ".join(r) for r in rows)
        body = f"*{title}*\n" + "\n".join(lines) + (f"\n```{listing}```" if rows else "")
        return json.dumps({"text": body, "username": "logistik"})
    if config.format == "template" and config.template:
        values = {
            "title": title,
            "status": state.status,
            "text": text,
            "table": table,
            "group": state.group_id,
            "topic": state.topic,
            "failed_events": state.failed_events,
            "error": state.last_error,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        return _fill(config.template, values)
    return json.dumps({"text": text, "username": "logistik"})


def _fill(template: str, values: dict[str, object]) -> str:
    """A template body with each value escaped for a JSON string."""
    quoted = {k: json.dumps(str(v))[1:-1] for k, v in values.items()}
    return string.Template(template).safe_substitute(quoted)


def render_rollback(
    config: WebhookConfig, topic: str, group_id: str, node_id: str, why: str
) -> str:
    """The JSON body posted when a rollout rolls its canary back."""
    title = f"logistik: rollout of {node_id} ({group_id} on {topic}) rolled back"
    line = f"Its traffic is 0 again: {why}"
    if config.format == "slack":
        return json.dumps({"text": f"*{title}*\n{line}", "username": "logistik"})
    text = f"#### :leftwards_arrow_with_hook: {title}\n{line}"
    if config.format == "template" and config.template:
        values: dict[str, object] = {
            "title": title,
            "status": CRITICAL,
            "text": text,
            "table": "",
            "group": group_id,
            "topic": topic,
            "failed_events": 0,
            "error": why,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        return _fill(config.template, values)
    return json.dumps({"text": text, "username": "logistik"})

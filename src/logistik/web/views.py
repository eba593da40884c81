"""Handlers as the API and the command line show them, and handlers grouped by host."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from logistik.control.store import HandlerRecord
from logistik.handler import Handler
from logistik.observe.figures import RATE_WINDOW_S
from logistik.observe.reachability import Reach
from logistik.routing.registry import LiveHandler
from logistik.web.state import AppState
from logistik.web.uwsgi import UwsgiStats

Views = Callable[[list[HandlerRecord]], Awaitable[list[dict[str, Any]]]]


def record_fields(record: HandlerRecord, *, with_url: bool = False) -> dict[str, Any]:
    """A stored handler's fields (timeout in seconds), its URL if asked, state and origin."""
    handler = record.handler
    fields = {
        **handler.model_dump(mode="json", exclude={"timeout_s"}),
        "timeout": handler.timeout_s,
    }
    if with_url:
        fields["url"] = handler.url
    return {
        **fields,
        "state": record.state,
        "source": record.source,
        "declared_model_type": record.declared_model_type,
        "problem": record.problem,
    }


def handler_view(
    record: HandlerRecord, state: AppState, uwsgi: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A handler as the API shows it: fields, state, in-flight calls, figures, uWSGI stats."""
    instance = state.registry.instance(record.node_id)
    return {
        **record_fields(record, with_url=True),
        "decoy": {
            "compared": record.decoy_compared,
            "agreed": record.decoy_agreed,
            "agreement": record.agreement,
        },
        "in_flight": state.in_flight(record.node_id, instance.in_flight if instance else 0),
        "circuit": circuit_view(instance),
        "reachable": reach.view() if (reach := _reach(state, record.node_id)) else None,
        "share": measured_share(state, record.handler),
        "figures": state.figures.handler(record.node_id),
        "uwsgi": uwsgi,
        "updated_at": _utc(record.updated_at).isoformat(),
    }


def circuit_view(instance: LiveHandler | None) -> dict[str, Any] | None:
    """An instance's circuit breaker: state, since when, failures in a row, last error."""
    if instance is None:
        return None
    since = instance.circuit_since
    return {
        "state": instance.circuit.value,
        "since": datetime.fromtimestamp(since, UTC).isoformat() if since else None,
        "failures": instance.consecutive_failures,
        "last_error": instance.last_error or None,
    }


def measured_share(state: AppState, handler: Handler) -> dict[str, Any] | None:
    """The share of its group's recent calls an answering instance took (the last five
    minutes), beside the configured traffic; None when the group had no calls."""
    group = state.registry.group(handler.event, handler.group_id)
    if group is None:
        return None
    now_s = time.time()
    calls = {
        instance.node_id: figures.recent_calls(now_s)
        for instance in (*group.production, *group.canaries)
        if (figures := state.figures.handlers.get(instance.node_id)) is not None
    }
    total = sum(calls.values())
    if handler.node_id not in calls or total == 0:
        return None
    measured = calls[handler.node_id] / total
    return {"measured": measured, "of_calls": total, "window_s": RATE_WINDOW_S}


def _reach(state: AppState, node_id: str) -> Reach | None:
    """The last probe of a routed model, None when it was not probed (or is not routed)."""
    return None if state.reachability is None else state.reachability.get(node_id)


def live_views(state: AppState, stats: UwsgiStats) -> Views:
    """Handler views with each handler's uWSGI stats, fetched together."""

    async def views(records: list[HandlerRecord]) -> list[dict[str, Any]]:
        found = await stats.for_handlers(r.handler for r in records)
        return [handler_view(r, state, found.get(r.node_id)) for r in records]

    return views


def _utc(moment: datetime) -> datetime:
    """A time with its zone (the store's SQLite gives them back without; they are UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def host_views(records: list[HandlerRecord]) -> list[dict[str, Any]]:
    """Handlers grouped by the address they listen on."""
    hosts: dict[str, list[HandlerRecord]] = {}
    for record in records:
        hosts.setdefault(record.handler.endpoint, []).append(record)
    views = []
    for endpoint, group in sorted(hosts.items()):
        names = Counter(r.handler.hostname for r in group)
        hostname = min(names, key=lambda name: (-names[name], name))
        group.sort(key=lambda r: (r.handler.port, r.node_id))
        views.append(
            {
                "hostname": hostname,
                "endpoint": endpoint,
                "handlers": [
                    {
                        "node_id": r.node_id,
                        "name": r.handler.name,
                        "model_type": r.handler.model_type.value,
                        "state": r.state,
                        "port": r.handler.port,
                        "version": r.handler.version,
                    }
                    for r in group
                ],
            }
        )
    return views

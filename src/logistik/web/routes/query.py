"""Send one test event to one registered handler; the newest event of a topic to start from."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from logistik.web.auth import Auth
from logistik.web.bodies import QueryRequest
from logistik.web.query import as_routed, latest_event, query
from logistik.web.state import AppState


def router(state: AppState, auth: Auth) -> APIRouter:
    """The query page's call (a state change: it reaches a model)."""
    routes = APIRouter()

    @routes.get("/api/topics/{topic}/latest-event", dependencies=[Depends(auth.require_write)])
    async def topic_latest_event(topic: str) -> dict[str, Any]:
        """The newest event on a topic, for the query page to start from (it shows event
        content, so it needs the same rights as sending a query); 404 when there is none."""
        found = await asyncio.to_thread(latest_event, state.config.kafka, topic)
        if found is None:
            raise HTTPException(404, f"no event on {topic} yet")
        return found

    @routes.post("/api/query", dependencies=[Depends(auth.require_write)])
    async def query_handler(request: QueryRequest) -> dict[str, Any]:
        """Send an event to a registered handler and show its answer; nothing goes to Kafka."""
        record = await state.service.show(request.node_id)
        web = state.config.web
        event = as_routed(request.event)
        return await query(record.handler, event, web.query_timeout_s, web.query_max_bytes)

    return routes

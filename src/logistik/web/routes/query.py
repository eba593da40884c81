"""Send one test event to one registered handler."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from logistik.web.auth import Auth
from logistik.web.bodies import QueryRequest
from logistik.web.query import as_routed, query
from logistik.web.state import AppState


def router(state: AppState, auth: Auth) -> APIRouter:
    """The query page's call (a state change: it reaches a model)."""
    routes = APIRouter()

    @routes.post("/api/query", dependencies=[Depends(auth.require_write)])
    async def query_handler(request: QueryRequest) -> dict[str, Any]:
        """Send an event to a registered handler and show its answer; nothing goes to Kafka."""
        record = await state.service.show(request.node_id)
        web = state.config.web
        event = as_routed(request.event)
        return await query(record.handler, event, web.query_timeout_s, web.query_max_bytes)

    return routes

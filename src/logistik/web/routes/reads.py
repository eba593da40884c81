"""Health, status, handlers, hosts and failures."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query

from logistik.web.auth import Auth
from logistik.web.state import AppState
from logistik.web.views import Views, host_views


def router(state: AppState, auth: Auth, views: Views) -> APIRouter:
    """What anyone may read (everyone, unless `web.auth.read` is protected)."""
    routes = APIRouter()
    reader = [Depends(auth.require_read)]

    @routes.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok"}

    @routes.get("/api/status", dependencies=reader)
    async def status() -> dict[str, Any]:
        """The router's live status and per-topic figures."""
        return {**state.status(), "topics": state.figures.topics()}

    @routes.get("/api/handlers", dependencies=reader)
    async def handlers(
        topic: str | None = None,
        host: str | None = None,
        model_type: str | None = Query(None, alias="type"),
        state_name: str | None = Query(None, alias="state"),
    ) -> list[dict[str, Any]]:
        """Every handler, filtered by topic, type, host and state, with figures and uWSGI stats."""
        return await views(await state.service.find(topic, model_type, host, state_name))

    @routes.get("/api/handlers/{node_id}", dependencies=reader)
    async def handler(node_id: str) -> dict[str, Any]:
        """One handler with its figures and uWSGI stats."""
        return (await views([await state.service.show(node_id)]))[0]

    @routes.get("/api/hosts", dependencies=reader)
    async def hosts() -> list[dict[str, Any]]:
        """Handlers grouped by the address they listen on."""
        return host_views(await state.service.find())

    @routes.get("/api/failures", dependencies=reader)
    async def failures(limit: int = 50) -> list[dict[str, Any]]:
        """The most recent records written to failed topics by this process."""
        if not 1 <= limit <= 200:
            raise HTTPException(422, "limit must be between 1 and 200")
        return list(state.figures.recent_failures)[:limit]

    return routes

"""Enable, disable, retire, promote, demote and traffic: each answers what it changed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from logistik.control.handler_service import HandlerService
from logistik.web.auth import Auth
from logistik.web.bodies import TrafficChange
from logistik.web.views import Views


def router(service: HandlerService, auth: Auth, views: Views) -> APIRouter:
    """The rollout actions on one handler."""
    routes = APIRouter()
    writer = [Depends(auth.require_write)]

    @routes.post("/api/handlers/{node_id}/enable", dependencies=writer)
    async def enable(node_id: str) -> dict[str, Any]:
        """Let a handler disabled by hand get events again."""
        return (await views([await service.enable(node_id)]))[0]

    @routes.post("/api/handlers/{node_id}/disable", dependencies=writer)
    async def disable(node_id: str) -> dict[str, Any]:
        """Stop sending events to a handler until it is enabled again."""
        return (await views([await service.disable(node_id)]))[0]

    @routes.post("/api/handlers/{node_id}/retire", dependencies=writer)
    async def retire(node_id: str) -> dict[str, Any]:
        """Take a handler out of rotation for good."""
        return (await views([await service.retire(node_id)]))[0]

    @routes.post("/api/handlers/{node_id}/promote", dependencies=writer)
    async def promote(node_id: str) -> list[dict[str, Any]]:
        """Make a canary, deploy or decoy production; answers every handler changed."""
        return await views(await service.promote(node_id))

    @routes.post("/api/handlers/{node_id}/demote", dependencies=writer)
    async def demote(node_id: str) -> dict[str, Any]:
        """Make a production instance a standby canary (traffic 0)."""
        return (await views([await service.demote(node_id)]))[0]

    @routes.put("/api/handlers/{node_id}/traffic", dependencies=writer)
    async def traffic(node_id: str, change: TrafficChange) -> dict[str, Any]:
        """Set a canary's share (0-1) of its group's events."""
        return (await views([await service.set_traffic(node_id, change.traffic)]))[0]

    return routes

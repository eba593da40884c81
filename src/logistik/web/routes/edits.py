"""Add, edit and delete handlers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException

from logistik.control.handler_service import HandlerService
from logistik.control.store import DISCOVERED_FIELDS
from logistik.errors import ActionError, HandlerNotFoundError, StoreError, one_line
from logistik.web.auth import Auth
from logistik.web.views import Views

EDITABLE_FIELDS = frozenset(DISCOVERED_FIELDS) | {"timeout"}
Fields = Annotated[dict[str, Any], Body(description="handler fields")]


def router(service: HandlerService, auth: Auth, views: Views) -> APIRouter:
    """Changes to the stored handlers themselves."""
    routes = APIRouter()
    writer = [Depends(auth.require_write)]

    @routes.post("/api/handlers", dependencies=writer, status_code=201)
    async def add(fields: Fields) -> dict[str, Any]:
        """Register a handler by hand (the fields of a static handler)."""
        try:
            record = await service.add(fields)
        except ActionError as exc:  # the service refuses fields that do not make a handler
            raise HTTPException(422, one_line(str(exc))) from None
        except StoreError as exc:  # a handler with this node id exists
            raise HTTPException(409, one_line(str(exc))) from None
        return (await views([record]))[0]

    @routes.patch("/api/handlers/{node_id}", dependencies=writer)
    async def edit(node_id: str, fields: Fields) -> dict[str, Any]:
        """Change a handler's fields (identity, admin state and node id stay)."""
        unknown = sorted(set(fields) - EDITABLE_FIELDS)
        if unknown or not fields:
            raise HTTPException(
                422, f"cannot edit {', '.join(unknown)}" if unknown else "no field to change"
            )
        try:
            record = await service.edit(node_id, fields)
        except HandlerNotFoundError:
            raise
        except StoreError as exc:  # the edited handler would not be valid
            raise HTTPException(422, one_line(str(exc))) from None
        return (await views([record]))[0]

    @routes.delete("/api/handlers/{node_id}", dependencies=writer)
    async def delete(node_id: str) -> dict[str, Any]:
        """Remove a handler from the store (discovery adds it again if still registered)."""
        await service.delete(node_id)
        return {"node_id": node_id, "deleted": True}

    return routes

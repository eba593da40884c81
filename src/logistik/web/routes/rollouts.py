"""Rollouts: start one, follow its decisions, pause, resume or abort it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import Field

from logistik.control.rollout_model import RolloutOptions
from logistik.control.rollout_service import RolloutService
from logistik.control.rollout_store import RolloutNotFoundError
from logistik.web.auth import Auth
from logistik.web.state import AppState


class RolloutStart(RolloutOptions):
    """The candidate to roll out, and the rollout's options (each with a safe default)."""

    node_id: str = Field(min_length=1)


def router(state: AppState, auth: Auth) -> APIRouter:
    """Reading rollouts (as handlers are read) and steering them (as handlers are changed)."""
    routes = APIRouter()
    reader = [Depends(auth.require_read)]
    writer = [Depends(auth.require_write)]
    service = RolloutService(state.service.store)

    async def one(rollout_id: int) -> dict[str, Any]:
        try:
            return await service.view(await service.rollouts.get(rollout_id))
        except RolloutNotFoundError as exc:
            raise HTTPException(404, str(exc)) from None

    @routes.get("/api/rollouts", dependencies=reader)
    async def rollouts(node_id: str | None = None, active: bool = False) -> list[dict[str, Any]]:
        """Rollouts, newest first: of one candidate, or only those still running or paused."""
        return [await service.view(r, details=False) for r in await service.find(node_id, active)]

    @routes.get("/api/rollouts/{rollout_id}", dependencies=reader)
    async def rollout(rollout_id: int) -> dict[str, Any]:
        """One rollout with every decision, its figures now, and canary against production."""
        return await one(rollout_id)

    @routes.post("/api/rollouts", dependencies=writer, status_code=201)
    async def start(body: RolloutStart) -> dict[str, Any]:
        """Start a rollout of a canary (or a decoy, shadowing first)."""
        options = RolloutOptions.model_validate(body.model_dump(exclude={"node_id"}))
        return await one((await service.start(body.node_id, options)).id)

    for verb in ("pause", "resume", "abort"):
        _steer(routes, service, verb, writer, one)
    return routes


def _steer(routes: APIRouter, service: RolloutService, verb: str, writer: Any, one: Any) -> None:
    """POST /api/rollouts/{id}/<verb>."""

    async def steer(rollout_id: int) -> dict[str, Any]:
        try:
            await getattr(service, verb)(rollout_id)
        except RolloutNotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        result: dict[str, Any] = await one(rollout_id)
        return result

    steer.__doc__ = {
        "pause": "Stop deciding; the canary keeps its share until resumed.",
        "resume": "Decide again, in the step where the rollout was paused.",
        "abort": "End the rollout; the canary's traffic goes back to 0.",
    }[verb]
    routes.add_api_route(
        f"/api/rollouts/{{rollout_id}}/{verb}",
        steer,
        methods=["POST"],
        dependencies=writer,
        name=f"rollout_{verb}",
    )

"""The REST API (FastAPI): handlers, their figures, rollout actions, health."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from logistik.config import Config
from logistik.errors import ActionError, HandlerNotFoundError, LogistikError
from logistik.figures import Figures
from logistik.registry import Registry
from logistik.service import HandlerService
from logistik.store import HandlerRecord


@dataclass
class AppState:
    """What the API reads from the running router."""

    config: Config
    service: HandlerService
    figures: Figures
    registry: Registry
    status: Callable[[], dict[str, Any]]  # the router's live status: consuming, in flight, ...


def handler_view(record: HandlerRecord, state: AppState) -> dict[str, Any]:
    """A handler as the API shows it: fields, state, in-flight calls and logistik's figures."""
    handler = record.handler
    instance = state.registry.instance(handler.node_id)
    return {
        **handler.model_dump(mode="json", exclude={"timeout_s"}),
        "timeout": handler.timeout_s,
        "url": handler.url,
        "state": record.state,
        "source": record.source,
        "declared_model_type": record.declared_model_type,
        "problem": record.problem,
        "decoy": {"compared": record.decoy_compared, "agreed": record.decoy_agreed,
                  "agreement": record.agreement},
        "in_flight": instance.in_flight if instance else 0,
        "figures": state.figures.handler(handler.node_id),
        "updated_at": record.updated_at.isoformat(),
    }  # fmt: skip


def create_app(state: AppState) -> FastAPI:
    """The API application for one running router."""
    app = FastAPI(title="logistik", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.logistik = state

    @app.exception_handler(HandlerNotFoundError)
    async def not_found(_request: Request, exc: HandlerNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ActionError)
    async def refused(_request: Request, exc: ActionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(LogistikError)
    async def failed(_request: Request, exc: LogistikError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok"}

    @app.get("/api/status")
    async def status() -> dict[str, Any]:
        """The router's live status and per-topic figures."""
        return {**state.status(), "topics": state.figures.topics()}

    @app.get("/api/handlers")
    async def handlers(
        topic: str | None = None,
        host: str | None = None,
        model_type: str | None = Query(None, alias="type"),
        state_name: str | None = Query(None, alias="state"),
    ) -> list[dict[str, Any]]:
        """Every handler, filtered by topic, type, host and state."""
        records = await state.service.find(topic, model_type, host, state_name)
        return [handler_view(r, state) for r in records]

    @app.get("/api/handlers/{node_id}")
    async def handler(node_id: str) -> dict[str, Any]:
        """One handler with its figures."""
        return handler_view(await state.service.show(node_id), state)

    @app.get("/api/failures")
    async def failures(limit: int = 50) -> list[dict[str, Any]]:
        """The most recent records written to failed topics by this process."""
        if not 1 <= limit <= 200:
            raise HTTPException(422, "limit must be between 1 and 200")
        return list(state.figures.recent_failures)[:limit]

    return app

"""The REST API (FastAPI): handlers, their figures, rollout actions, hosts, queries, login."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from logistik.errors import (
    ActionError,
    HandlerNotFoundError,
    InvalidEventError,
    LogistikError,
    StoreUnavailableError,
    one_line,
)
from logistik.web.auth import Auth
from logistik.web.pages import mount_ui
from logistik.web.routes import actions, docs, edits, oidc, query, reads, session
from logistik.web.state import AppState
from logistik.web.uwsgi import UwsgiStats
from logistik.web.views import live_views


def create_app(state: AppState) -> FastAPI:
    """The API application (and the web UI) for one running router."""
    app = FastAPI(title="logistik", version="0.1.0", docs_url=None, redoc_url=None)
    auth = Auth(state.config.web.auth)
    app.state.logistik = state
    app.state.auth = auth
    views = live_views(state, UwsgiStats())

    _error_handlers(app)
    _headers(app)
    for routes in (
        reads.router(state, auth, views),
        actions.router(state.service, auth, views),
        edits.router(state.service, auth, views),
        query.router(state, auth),
        session.router(auth),
        oidc.router(auth),
        docs.router(),
    ):
        app.include_router(routes)
    mount_ui(app)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every refusal as `{"detail": "one line"}` with its status."""

    def answer(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": one_line(str(exc))}, status_code=status)

        return handle

    app.add_exception_handler(HandlerNotFoundError, answer(404))
    app.add_exception_handler(StoreUnavailableError, answer(503))  # the database is away
    app.add_exception_handler(ActionError, answer(409))
    app.add_exception_handler(InvalidEventError, answer(422))
    app.add_exception_handler(LogistikError, answer(400))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_request(exc)}, status_code=422)


def describe_request(exc: RequestValidationError) -> str:
    """A request's problems in one line, naming each field, never echoing a value."""
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        if error["type"] == "json_invalid":
            problems.append(f"the body is not valid JSON (at character {location[-1]})")
            continue
        where = ".".join(location[1:]) or location[0]
        problems.append(f"{where}: {str(error['msg']).removeprefix('Value error, ')}")
    return "; ".join(problems)


def _headers(app: FastAPI) -> None:
    """API answers are never cached nor sniffed as another type."""

    @app.middleware("http")
    async def no_store(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.url.path.startswith(("/api/", "/auth/")):
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

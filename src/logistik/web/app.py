"""The REST API (FastAPI): handlers, their figures, rollout actions, hosts, queries, login."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from logistik.config import Config
from logistik.control.handler_service import HandlerService
from logistik.control.store import DISCOVERED_FIELDS, HandlerRecord
from logistik.errors import (
    ActionError,
    HandlerNotFoundError,
    InvalidEventError,
    LogistikError,
    StoreError,
)
from logistik.observe.figures import Figures
from logistik.routing.registry import Registry
from logistik.web.auth import OIDC_COOKIE, Auth, OidcLogin
from logistik.web.pages import mount_ui
from logistik.web.query import as_routed, query
from logistik.web.text import one_line
from logistik.web.uwsgi import UwsgiStats

EDITABLE_FIELDS = frozenset(DISCOVERED_FIELDS) | {"timeout"}
Fields = Annotated[dict[str, Any], Body(description="handler fields")]
Views = Callable[[list[HandlerRecord]], Awaitable[list[dict[str, Any]]]]


@dataclass
class AppState:
    """What the API reads from the running router."""

    config: Config
    service: HandlerService
    figures: Figures
    registry: Registry
    status: Callable[[], dict[str, Any]]  # the router's live status: consuming, in flight, ...


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrafficChange(_Body):
    """A canary's new share of its group's events."""

    traffic: float = Field(ge=0.0, le=1.0)


class QueryRequest(_Body):
    """One event to send to one registered handler."""

    node_id: str = Field(min_length=1)
    event: dict[str, Any]


class LoginRequest(_Body):
    """A user name and password, or an API token."""

    user: str | None = Field(default=None, min_length=1, max_length=256)
    password: str | None = Field(default=None, max_length=1024)
    token: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _complete(self) -> LoginRequest:
        """Either a token, or both a user and a password."""
        if self.token is None and (self.user is None or self.password is None):
            raise ValueError("give user and password, or token")
        return self


def handler_view(
    record: HandlerRecord, state: AppState, uwsgi: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A handler as the API shows it: fields, state, in-flight calls, figures, uWSGI stats."""
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
        "decoy": {
            "compared": record.decoy_compared,
            "agreed": record.decoy_agreed,
            "agreement": record.agreement,
        },
        "in_flight": instance.in_flight if instance else 0,
        "figures": state.figures.handler(handler.node_id),
        "uwsgi": uwsgi,
        "updated_at": _utc(record.updated_at).isoformat(),
    }


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


def docs_page(schema: dict[str, Any]) -> str:
    """A self-contained page listing the API's operations (nothing loaded from elsewhere)."""
    items = []
    for path, operations in sorted(schema.get("paths", {}).items()):
        for method, operation in operations.items():
            text = (operation.get("description") or operation.get("summary") or "").split("\n")[0]
            items.append(
                f"<li><code>{html.escape(method.upper())} {html.escape(path)}</code> "
                f"{html.escape(text)}</li>"
            )
    title = html.escape(f"{schema['info']['title']} {schema['info']['version']} API")
    return (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{title}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "li{margin:.4em 0}code{font-weight:bold}</style>"
        f'<h1>{title}</h1><p>The full description: <a href="/openapi.json">openapi.json</a>. '
        "Reading is open unless <code>web.auth.read</code> is protected; every change needs "
        "<code>Authorization: Bearer &lt;token&gt;</code>, or a session cookie with its "
        "<code>X-CSRF-Token</code> header.</p>"
        f"<ul>{''.join(items)}</ul></html>"
    )


def create_app(state: AppState) -> FastAPI:
    """The API application (and the web UI) for one running router."""
    app = FastAPI(title="logistik", version="0.1.0", docs_url=None, redoc_url=None)
    auth = Auth(state.config.web.auth)
    app.state.logistik = state
    app.state.auth = auth
    stats = UwsgiStats()

    async def views(records: list[HandlerRecord]) -> list[dict[str, Any]]:
        found = await stats.for_handlers(r.handler for r in records)
        return [handler_view(r, state, found.get(r.node_id)) for r in records]

    _error_handlers(app)
    _headers(app)
    _read_routes(app, state, auth, views)
    _rollout_routes(app, state, auth, views)
    _edit_routes(app, state, auth, views)
    _query_route(app, state, auth)
    _auth_routes(app, auth)
    _oidc_routes(app, auth)
    _docs_route(app)
    mount_ui(app)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every refusal as `{"detail": "one line"}` with its status."""

    def answer(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": one_line(str(exc))}, status_code=status)

        return handle

    app.add_exception_handler(HandlerNotFoundError, answer(404))
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


def _read_routes(app: FastAPI, state: AppState, auth: Auth, views: Views) -> None:
    """Health, status, handlers, hosts and failures."""
    reader = [Depends(auth.require_read)]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok"}

    @app.get("/api/status", dependencies=reader)
    async def status() -> dict[str, Any]:
        """The router's live status and per-topic figures."""
        return {**state.status(), "topics": state.figures.topics()}

    @app.get("/api/handlers", dependencies=reader)
    async def handlers(
        topic: str | None = None,
        host: str | None = None,
        model_type: str | None = Query(None, alias="type"),
        state_name: str | None = Query(None, alias="state"),
    ) -> list[dict[str, Any]]:
        """Every handler, filtered by topic, type, host and state, with figures and uWSGI stats."""
        return await views(await state.service.find(topic, model_type, host, state_name))

    @app.get("/api/handlers/{node_id}", dependencies=reader)
    async def handler(node_id: str) -> dict[str, Any]:
        """One handler with its figures and uWSGI stats."""
        return (await views([await state.service.show(node_id)]))[0]

    @app.get("/api/hosts", dependencies=reader)
    async def hosts() -> list[dict[str, Any]]:
        """Handlers grouped by the address they listen on."""
        return host_views(await state.service.find())

    @app.get("/api/failures", dependencies=reader)
    async def failures(limit: int = 50) -> list[dict[str, Any]]:
        """The most recent records written to failed topics by this process."""
        if not 1 <= limit <= 200:
            raise HTTPException(422, "limit must be between 1 and 200")
        return list(state.figures.recent_failures)[:limit]


def _rollout_routes(app: FastAPI, state: AppState, auth: Auth, views: Views) -> None:
    """Enable, disable, retire, promote, demote and traffic: each answers what it changed."""
    writer = [Depends(auth.require_write)]
    service = state.service

    @app.post("/api/handlers/{node_id}/enable", dependencies=writer)
    async def enable(node_id: str) -> dict[str, Any]:
        """Let a handler disabled by hand get events again."""
        return (await views([await service.enable(node_id)]))[0]

    @app.post("/api/handlers/{node_id}/disable", dependencies=writer)
    async def disable(node_id: str) -> dict[str, Any]:
        """Stop sending events to a handler until it is enabled again."""
        return (await views([await service.disable(node_id)]))[0]

    @app.post("/api/handlers/{node_id}/retire", dependencies=writer)
    async def retire(node_id: str) -> dict[str, Any]:
        """Take a handler out of rotation for good."""
        return (await views([await service.retire(node_id)]))[0]

    @app.post("/api/handlers/{node_id}/promote", dependencies=writer)
    async def promote(node_id: str) -> list[dict[str, Any]]:
        """Make a canary, deploy or decoy production; answers every handler changed."""
        return await views(await service.promote(node_id))

    @app.post("/api/handlers/{node_id}/demote", dependencies=writer)
    async def demote(node_id: str) -> dict[str, Any]:
        """Make a production instance a standby canary (traffic 0)."""
        return (await views([await service.demote(node_id)]))[0]

    @app.put("/api/handlers/{node_id}/traffic", dependencies=writer)
    async def traffic(node_id: str, change: TrafficChange) -> dict[str, Any]:
        """Set a canary's share (0-1) of its group's events."""
        return (await views([await service.set_traffic(node_id, change.traffic)]))[0]


def _edit_routes(app: FastAPI, state: AppState, auth: Auth, views: Views) -> None:
    """Add, edit and delete handlers."""
    writer = [Depends(auth.require_write)]
    service = state.service

    @app.post("/api/handlers", dependencies=writer, status_code=201)
    async def add(fields: Fields) -> dict[str, Any]:
        """Register a handler by hand (the fields of a static handler)."""
        try:
            record = await service.add(fields)
        except ActionError as exc:  # the service refuses fields that do not make a handler
            raise HTTPException(422, one_line(str(exc))) from None
        except StoreError as exc:  # a handler with this node id exists
            raise HTTPException(409, one_line(str(exc))) from None
        return (await views([record]))[0]

    @app.patch("/api/handlers/{node_id}", dependencies=writer)
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

    @app.delete("/api/handlers/{node_id}", dependencies=writer)
    async def delete(node_id: str) -> dict[str, Any]:
        """Remove a handler from the store (discovery adds it again if still registered)."""
        await service.delete(node_id)
        return {"node_id": node_id, "deleted": True}


def _query_route(app: FastAPI, state: AppState, auth: Auth) -> None:
    """Send one test event to one registered handler."""

    @app.post("/api/query", dependencies=[Depends(auth.require_write)])
    async def query_handler(request: QueryRequest) -> dict[str, Any]:
        """Send an event to a registered handler and show its answer; nothing goes to Kafka."""
        record = await state.service.show(request.node_id)
        web = state.config.web
        event = as_routed(request.event)
        return await query(record.handler, event, web.query_timeout_s, web.query_max_bytes)


def _auth_routes(app: FastAPI, auth: Auth) -> None:
    """Log in with a password or token, log out, and say who is logged in."""

    @app.get("/auth/session")
    async def session(request: Request) -> dict[str, Any]:
        """Who is logged in, the session's CSRF token, and what they may do."""
        return auth.view(auth.identify(request))

    @app.post("/auth/login")
    async def login(
        credentials: LoginRequest, request: Request, response: Response
    ) -> dict[str, Any]:
        """Start a UI session with a user and password, or an API token."""
        identity = await auth.login(credentials.user, credentials.password, credentials.token)
        auth.set_session(response, request, identity)
        return auth.view(identity)

    @app.post("/auth/logout")
    async def logout(request: Request, response: Response) -> dict[str, Any]:
        """End the UI session."""
        auth.logout(request, response)
        return auth.view(None)


def _oidc_routes(app: FastAPI, auth: Auth) -> None:
    """Log in with an OpenID Connect provider, when `web.auth.oidc` is set."""
    config = auth.config.oidc
    oidc = OidcLogin(config, auth.signer) if config is not None else None

    def configured() -> OidcLogin:
        if oidc is None:
            raise HTTPException(404, "OpenID Connect login is not configured (web.auth.oidc)")
        return oidc

    @app.get("/auth/oidc/login")
    async def oidc_login(request: Request, next_path: str = Query("/", alias="next")) -> Response:
        """Go to the OpenID provider to log in; it sends the browser back to /auth/callback."""
        login = configured()
        url, pending = await login.start(next_path)
        response = RedirectResponse(url, status_code=302)
        login.set_pending(response, request, pending)
        return response

    @app.get("/auth/callback")
    async def oidc_callback(request: Request) -> Response:
        """Where the OpenID provider sends the browser back: starts the UI session."""
        login = configured()
        cookie = request.cookies.get(OIDC_COOKIE)
        user, next_path = await login.finish(request.query_params, cookie)
        response = RedirectResponse(next_path, status_code=303)
        auth.set_session(response, request, auth.new_identity(user, "oidc"))
        response.delete_cookie(OIDC_COOKIE, path="/auth/")
        return response


def _docs_route(app: FastAPI) -> None:
    """A readable list of the API at /docs, made here: no script or style from elsewhere."""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(
            docs_page(app.openapi()),
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

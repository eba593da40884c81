"""Log in with a password or token, log out, and say who is logged in."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from logistik.web.auth import Auth
from logistik.web.auth.sessions import client_of
from logistik.web.bodies import LoginRequest


def router(auth: Auth) -> APIRouter:
    """The UI session's routes."""
    routes = APIRouter()

    @routes.get("/auth/session")
    async def session(request: Request) -> dict[str, Any]:
        """Who is logged in, the session's CSRF token, and what they may do."""
        return auth.view(auth.identify(request))

    @routes.post("/auth/login")
    async def login(
        credentials: LoginRequest, request: Request, response: Response
    ) -> dict[str, Any]:
        """Start a UI session with a user and password, or an API token."""
        identity = await auth.login(
            credentials.user, credentials.password, credentials.token, client_of(request)
        )
        auth.set_session(response, request, identity)
        return auth.view(identity)

    @routes.post("/auth/logout")
    async def logout(request: Request, response: Response) -> dict[str, Any]:
        """End the UI session."""
        auth.logout(request, response)
        return auth.view(None)

    return routes

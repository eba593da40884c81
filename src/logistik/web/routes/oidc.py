"""Log in with an OpenID Connect provider, when `web.auth.oidc` is set."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import RedirectResponse

from logistik.web.auth import OIDC_COOKIE, Auth, OidcLogin


def router(auth: Auth) -> APIRouter:
    """The way to the provider and back; 404 when no provider is configured."""
    routes = APIRouter()
    config = auth.config.oidc
    oidc = OidcLogin(config, auth.signer) if config is not None else None

    def configured() -> OidcLogin:
        if oidc is None:
            raise HTTPException(404, "OpenID Connect login is not configured (web.auth.oidc)")
        return oidc

    @routes.get("/auth/oidc/login")
    async def oidc_login(request: Request, next_path: str = Query("/", alias="next")) -> Response:
        """Go to the OpenID provider to log in; it sends the browser back to /auth/callback."""
        login = configured()
        url, pending = await login.start(next_path)
        response = RedirectResponse(url, status_code=302)
        login.set_pending(response, request, pending)
        return response

    @routes.get("/auth/callback")
    async def oidc_callback(request: Request) -> Response:
        """Where the OpenID provider sends the browser back: starts the UI session."""
        login = configured()
        cookie = request.cookies.get(OIDC_COOKIE)
        user, next_path = await login.finish(request.query_params, cookie)
        response = RedirectResponse(next_path, status_code=303)
        auth.set_session(response, request, auth.new_identity(user, "oidc"))
        response.delete_cookie(OIDC_COOKIE, path="/auth/")
        return response

    return routes

"""The web UI: static HTML, CSS and JavaScript modules served at `/` and `/static/`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).with_name("static")
PAGES = ("/", "/handler/{node_id:path}", "/hosts", "/flow", "/failures", "/query")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


class _Assets(StaticFiles):
    """The UI's files, revalidated by the browser so that an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        """The file, with caching and type-sniffing headers."""
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def mount_ui(app: FastAPI) -> None:
    """Serve the UI: index.html for every page of the UI, its assets under /static."""
    index = UI_DIR / "index.html"

    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=SECURITY_HEADERS)

    for path in PAGES:
        app.add_api_route(path, page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/static", _Assets(directory=UI_DIR), name="ui-static")

"""A readable list of the API at /docs, made here: no script or style from elsewhere."""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse


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


def router() -> APIRouter:
    """/docs, left out of the API's own description."""
    routes = APIRouter()

    @routes.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(
            docs_page(request.app.openapi()),
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return routes

"""The REST API and the web UI."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from logistik.web.app import create_app
    from logistik.web.auth import Auth, hash_password, verify_password
    from logistik.web.pages import mount_ui
    from logistik.web.query import as_routed
    from logistik.web.server import WebError, add_operations_routes, bind, serve
    from logistik.web.state import AppState
    from logistik.web.views import handler_view, host_views, record_fields

__all__ = [
    "AppState",
    "Auth",
    "WebError",
    "add_operations_routes",
    "as_routed",
    "bind",
    "create_app",
    "handler_view",
    "hash_password",
    "host_views",
    "mount_ui",
    "record_fields",
    "serve",
    "verify_password",
]

# Each name loads its module on first use, so that the command line can show handlers
# (record_fields) without loading FastAPI and the server.
_HOMES = {
    "AppState": "logistik.web.state",
    "Auth": "logistik.web.auth",
    "WebError": "logistik.web.server",
    "add_operations_routes": "logistik.web.server",
    "as_routed": "logistik.web.query",
    "bind": "logistik.web.server",
    "create_app": "logistik.web.app",
    "handler_view": "logistik.web.views",
    "hash_password": "logistik.web.auth",
    "host_views": "logistik.web.views",
    "mount_ui": "logistik.web.pages",
    "record_fields": "logistik.web.views",
    "serve": "logistik.web.server",
    "verify_password": "logistik.web.auth",
}


def __getattr__(name: str) -> Any:
    """A public name of the web layer, imported from its module when first asked for."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(home), name)

"""Serves the REST API and web UI from the router's own process and event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from logistik.errors import LogistikError
from logistik.observe.health import Readiness

logger = logging.getLogger(__name__)


class WebError(LogistikError):
    """The web server cannot listen."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to logistik (it stops when logistik stops)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; a taken port is a one-line WebError."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise WebError(
            f"web: cannot listen on {host}:{port}: {exc.strerror} "
            "(set web.port, or web.enabled: false)"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def add_operations_routes(
    app: FastAPI, readiness: Readiness, collectors: CollectorRegistry
) -> None:
    """/readyz for orchestrators and /metrics for Prometheus."""

    async def readyz(_request: Request) -> Response:
        result = await readiness.check()
        return JSONResponse(result, status_code=200 if result["ready"] else 503)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(collectors), media_type=CONTENT_TYPE_LATEST)

    app.add_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
    app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)


async def serve(app: Starlette, sock: socket.socket, stop: asyncio.Event) -> None:
    """Serve the app on the socket until `stop` is set."""
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="web")
    if sock.family == socket.AF_UNIX:  # a worker answering the front of `run --workers N`
        logger.debug("answering the front worker on %s", sock.getsockname())
    else:
        host, port = sock.getsockname()[:2]
        logger.info("web UI and API on http://%s:%d/", host, port)
    try:
        await stop.wait()
    finally:
        server.should_exit = True
        await task

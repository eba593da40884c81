"""Real HTTP model servers for tests: aiohttp apps on loopback, each in its own thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from logistik.kafka.embedded import free_port


@dataclass(frozen=True)
class Reply:
    """What a test model answers: status, JSON body (or raw bytes), headers, delay."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    gate: threading.Event | None = None  # when given, the answer waits until it is set


Behaviour = Callable[[dict[str, Any], int], Reply]


def echo(event: dict[str, Any], _count: int) -> Reply:
    """Answer with the event's id and verb."""
    return Reply(200, {"id": event.get("id"), "verb": event.get("verb"), "answer": "ok"})


class ModelServer:
    """A model over HTTP whose answers a test scripts; it records every request it got."""

    def __init__(
        self,
        behaviour: Behaviour = echo,
        path: str = "/predict",
        info: dict[str, Any] | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.path = path
        self.info = info  # what GET /info[/<environment>] answers; None: 404
        self.info_requests: list[str] = []
        self.traceparents: list[str] = []
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.active = 0
        self.peak_active = 0
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> ModelServer:
        """Listen on the port and return when the server accepts requests."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("model server did not start")
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def count(self) -> int:
        """Requests received so far."""
        with self.lock:
            return len(self.requests)

    def ids(self) -> list[str]:
        """The event ids received, in order."""
        with self.lock:
            return [str(r.get("id")) for r in self.requests]

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", self.path, self._handle)
        app.router.add_get("/info", self._info)
        app.router.add_get("/info/{environment}", self._info)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()

    async def _info(self, request: web.Request) -> web.Response:
        with self.lock:
            self.info_requests.append(request.path)
        if self.info is None:
            return web.Response(status=404, text="no /info here")
        return web.json_response(self.info)

    async def _handle(self, request: web.Request) -> web.Response:
        event = orjson.loads(await request.read())
        with self.lock:
            self.requests.append(event)
            if "traceparent" in request.headers:
                self.traceparents.append(request.headers["traceparent"])
            self.times.append(time.monotonic())
            count = len(self.requests)
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
        try:
            reply = self.behaviour(event, count)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            if reply.gate is not None:
                await asyncio.get_running_loop().run_in_executor(None, reply.gate.wait, 60)
        finally:
            with self.lock:
                self.active -= 1
        body = (
            reply.raw
            if reply.raw is not None
            else (b"" if reply.body is None else orjson.dumps(reply.body))
        )
        return web.Response(
            status=reply.status,
            body=body,
            headers=reply.headers,
            content_type="application/json" if body else None,
        )


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
    """Poll a condition until it holds; fail with `what` when the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what or condition}")


async def wait_until_async(
    condition: Callable[[], bool], timeout_s: float = 5.0, what: str = ""
) -> None:
    """As wait_until, yielding to the running event loop between checks."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what or condition}")

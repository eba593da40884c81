"""HTTP/1.1 requests to models on the event loop's own connections, answers parsed by httptools.

One pool of keep-alive connections per process. Every request has a total deadline, redirects
are not followed (a 3xx is an answer like any other), proxies in the environment are not used,
and an answer stops being read once it passes a limit. A connection stays registered with the
loop for its whole life, so a request costs one write and the reads of its answer: about a
quarter of the CPU of libcurl's multi interface driven by the loop (bench/http_clients.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from logistik.errors import ModelCallError, one_line
from logistik.routing.sweep import NEVER, Sweep

logger = logging.getLogger(__name__)

MAX_ERROR_TEXT = 300  # of a model's error, kept in answers and logs
MAX_TARGETS = 1024  # parsed URLs kept; models come and go, so the cache is bounded
MAX_HEAD_BYTES = 64 * 1024  # of an answer's status line and headers (libcurl allowed 100 KB)
_RETRY_AFTER = b"retry-after"
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"


@dataclass(slots=True)
class Reply:
    """What a model answered: status, body (None once it passed the limit), Retry-After."""

    status: int
    body: bytes | None
    retry_after: str | None


@dataclass(frozen=True, slots=True)
class _Target:
    """A parsed URL: where to connect, and the start of each request's head."""

    key: tuple[str, int, bool]  # host, port, TLS: the connections that can serve it
    head: bytes  # request line and headers, up to the Content-Length value

    @property
    def where(self) -> str:
        return f"{self.key[0]}:{self.key[1]}"


class _StaleError(Exception):
    """The connection closed before a byte of the answer came."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a model, and the answer it is receiving."""

    def __init__(self, pool: HttpPool, key: tuple[str, int, bool]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.future: asyncio.Future[None] | None = None
        self.closed = False
        self.used = False  # has answered before: a close with no answer may be a stale one
        self.limit = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.status = 0
        self.over = False
        self.got = False  # a byte of this answer came
        self.framed = False  # the answer has a Content-Length or is chunked (else: until EOF)
        self.headers_done = False
        self.head_bytes = 0
        self.retry_after: bytes | None = None
        self.keep = False
        self.deadline = 0.0  # of the request under way (loop time)
        self.timeout_s = 0.0

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        future = self.future
        if future is None or future.done():  # nothing asked: a model talking out of turn is left
            self._abort()
            return
        self.got = True
        if not self.headers_done:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # A bug here, never the model: said once, and the call is retried like a fault.
            cause = exc.__context__ or exc
            logger.error("model calls: reading an answer failed: %r", cause)
            self._end(ModelCallError(f"the answer could not be read: {one_line(repr(cause), 200)}"))
            self._abort()
        except httptools.HttpParserError as exc:
            reason = (
                "the model answered something that is not HTTP"
                if not self.headers_done
                else f"the model's answer broke off: {one_line(str(exc), 120)}"
            )
            self._end(ModelCallError(reason))
            self._abort()
            return
        if not self.headers_done and self.head_bytes > MAX_HEAD_BYTES:
            # Headers are kept in memory until they end: a model must not grow them forever.
            self._end(ModelCallError(f"the model's answer headers are over {MAX_HEAD_BYTES} B"))
            self._abort()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost settles the request

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._lost(self)
        if self.future is None or self.future.done():
            return
        if not self.got:
            self._end(_StaleError())
        elif self.headers_done and not self.framed:  # an answer that ends when the model closes
            self.keep = False
            self._end(None)
        else:
            self._end(ModelCallError("the model closed the connection in the middle of its answer"))

    # ---- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._answered():
            return
        if len(name) == 11 and name.lower() == _RETRY_AFTER:
            self.retry_after = value.strip()
        elif len(name) == 14 and name.lower() == _CONTENT_LENGTH:
            self.framed = True
            value = value.strip()  # llhttp refuses a length that is not a number
            if len(value) > 18 or (value.isdigit() and int(value) > self.limit):
                self.over = True
        elif len(name) == 17 and name.lower() == _TRANSFER_ENCODING:
            self.framed = True

    def on_headers_complete(self) -> None:
        if self._answered():  # a second answer to one request: the connection is not kept
            self.keep = False
            return
        self.status = self.parser.get_status_code()
        if self.status < 200:  # an informational answer: the real one follows
            self.retry_after, self.framed, self.over = None, False, False
            return
        self.headers_done = True
        if self.over:  # the status and headers came: the answer is classified by them
            self.keep = False
            self._end(None)
            self._abort()

    def on_body(self, body: bytes) -> None:
        if self.over or self._answered():
            return
        self.size += len(body)
        if self.size > self.limit:
            self.over = True
            self.chunks = []
            self.keep = False
            self._end(None)
            self._abort()
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if not self.headers_done:  # the end of an informational answer
            return
        if self.future is not None and not self.future.done():
            self.keep = self.parser.should_keep_alive()
            self._end(None)

    def _answered(self) -> bool:
        """Whether the request under way has its answer (or there is none under way)."""
        return self.future is None or self.future.done()

    # ---- the pool's side

    def start(self, limit: int) -> asyncio.Future[None]:
        """Get ready for the answer to the request about to be written."""
        self.limit = limit
        self.chunks = []
        self.size = 0
        self.status = 0
        self.over = self.got = self.framed = self.headers_done = self.keep = False
        self.head_bytes = 0
        self.retry_after = None
        future = self.future = self.pool.loop.create_future()
        return future

    def reply(self) -> Reply:
        retry_after = self.retry_after
        return Reply(
            self.status,
            None if self.over else b"".join(self.chunks),
            None if retry_after is None else retry_after.decode("latin-1"),
        )

    def time_out(self) -> None:
        """The deadline passed: the request fails and its connection is closed."""
        self._end(ModelCallError(f"timeout after {self.timeout_s:g} s", True))
        self._abort()

    def _end(self, error: BaseException | None) -> None:
        future = self.future
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def _abort(self) -> None:
        self.keep = False
        if self.transport is not None and not self.closed:
            self.transport.abort()


class HttpPool:
    """Every model call of the process on one pool of keep-alive connections."""

    def __init__(self, max_connections: int, headers: dict[str, str]) -> None:
        self.loop = asyncio.get_running_loop()
        self._max_connections = max_connections  # 0: no bound (the router bounds the calls)
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._targets: dict[tuple[str, str], _Target] = {}
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tls: ssl.SSLContext | None = None
        self._closed = False
        self._sweep = Sweep(self.loop, self.loop.time, self._expire)  # the requests' deadlines

    async def request(
        self,
        method: str,
        url: str,
        body: bytes,
        timeout_s: float,
        limit: int,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One request; ModelCallError when no whole answer came within `timeout_s`."""
        if self._closed:
            raise ModelCallError("the model client is closed")
        target = self._targets.get((method, url)) or self._target(method, url)
        loop = self.loop
        deadline = loop.time() + timeout_s
        head = target.head
        if headers:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            if extra.count("\n") != len(headers) or extra.count("\r") != len(headers):
                # A line break inside a name or value would start a header of its own.
                raise ModelCallError("a request header holds a line break: not sent")
            try:
                encoded = extra.encode("latin-1")
            except UnicodeEncodeError:
                raise ModelCallError("a request header is not Latin-1 text: not sent") from None
            head = head.replace(b"Content-Length: ", encoded + b"Content-Length: ", 1)
        data = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        for _ in range(2):  # a reused connection the model had closed: once more, on a new one
            connection = self._take(target.key)
            if connection is None:
                connection = await self._connect(target, deadline, timeout_s)
            reused = connection.used
            future = connection.start(limit)
            connection.deadline, connection.timeout_s = deadline, timeout_s
            self._sweep.due_by(deadline)
            assert connection.transport is not None
            connection.transport.write(data)
            try:
                await future
            except _StaleError:
                if reused and loop.time() < deadline:
                    continue
                raise ModelCallError("the model closed the connection without answering") from None
            except BaseException:
                connection._abort()  # cancelled, or failed: its answer may still come
                raise
            finally:
                connection.future = None
            reply = connection.reply()
            self._release(connection)
            return reply
        raise ModelCallError("the model closed the connection without answering")

    def _expire(self, due: float) -> float:
        """Time out every request due by `due` (loop time); the nearest deadline left."""
        nearest = NEVER
        for connection in list(self._open):
            future = connection.future
            if future is None or future.done():
                continue
            if connection.deadline <= due:
                connection.time_out()
            elif connection.deadline < nearest:
                nearest = connection.deadline
        return nearest

    def _target(self, method: str, url: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ModelCallError(f"cannot call {one_line(url, 200)!r}: not an http(s) URL")
        tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise ModelCallError(f"cannot call {one_line(url, 200)!r}: bad port") from None
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        host = parts.netloc.rpartition("@")[2]
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{self._fixed}Content-Length: "
        target = _Target((parts.hostname, port, tls), head.encode("latin-1"))
        if len(self._targets) >= MAX_TARGETS:
            self._targets.clear()
        self._targets[(method, url)] = target
        return target

    def _take(self, key: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            transport = connection.transport
            if not connection.closed and transport is not None and not transport.is_closing():
                return connection
        return None

    async def _connect(self, target: _Target, deadline: float, timeout_s: float) -> _Connection:
        """A new connection to the target, within the request's deadline and the pool's bound."""
        host, port, tls = target.key
        try:
            async with asyncio.timeout_at(deadline):
                await self._room()
                self._opening += 1
                try:
                    _, connection = await self.loop.create_connection(
                        lambda: _Connection(self, target.key),
                        host,
                        port,
                        ssl=self._context() if tls else None,
                        server_hostname=host if tls else None,
                    )
                finally:
                    self._opening -= 1
        except TimeoutError:
            raise ModelCallError(f"timeout after {timeout_s:g} s", True) from None
        except OSError as exc:
            # asyncio's own text repeats the address; the system's names the cause.
            errno = exc.errno if not isinstance(exc, socket.gaierror) else None
            why = os.strerror(errno) if errno else exc.strerror or str(exc) or repr(exc)
            error = f"cannot connect to {target.where}: {one_line(why, 200)}"
            raise ModelCallError(error) from None
        if self._closed:
            connection._abort()
            raise ModelCallError("the model client was closed")
        self._open.add(connection)
        return connection

    async def _room(self) -> None:
        """Wait until one more connection may open; an idle one to another model gives way."""
        bound = self._max_connections
        while bound and len(self._open) + self._opening >= bound:
            for idle in self._idle.values():
                if idle:
                    oldest = idle.pop(0)
                    oldest._abort()
                    self._open.discard(oldest)  # counted no more, before connection_lost
                    break
            else:
                waiter = self.loop.create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                continue
            return

    def _release(self, connection: _Connection) -> None:
        """Back to the idle list when the model keeps it alive; else closed."""
        if connection.keep and not connection.closed and not self._closed:
            connection.used = True
            self._idle.setdefault(connection.key, []).append(connection)
            self._wake()
        else:
            connection._abort()

    def _lost(self, connection: _Connection) -> None:
        """A connection closed (by either side): it is no longer counted or reused."""
        self._open.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def close(self) -> None:
        """Close every connection; requests still under way fail at once."""
        self._closed = True
        self._sweep.cancel()
        for connection in list(self._open):
            connection._end(ModelCallError("the model client was closed"))
            connection._abort()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ModelCallError("the model client was closed"))

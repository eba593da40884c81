"""Models that misbehave below HTTP frameworks: HTTP/1.1 by hand over asyncio streams.

Each serves POST on any path from a thread of its own, keeps connections alive as models do,
and, until `healed` is set, answers in one of the ways a broken model does:

- `drip`: a valid answer, one byte every `drip_s`;
- `short`: a Content-Length it never fills, the connection kept open;
- `silent`: reads the request and sends nothing, the connection kept open;
- `chunked`: a 200 answer of `size` bytes of JSON in chunks, without a Content-Length;
- `hangup`: reads the request and closes the connection without a word;
- `garbage`: answers bytes that are not HTTP, then closes the connection;
- `headers`: a status line and a header that never ends (200 KB and counting);
- `once`: a valid answer (the connection not said to close), then closes the connection, as a
  model whose keep-alive timeout is shorter than the caller's does.

Once healed, or with mode `echo`, it answers at once with the event's id, as `echo` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Literal

import orjson

from logistik.kafka.embedded import free_port

Mode = Literal["drip", "short", "silent", "chunked", "hangup", "garbage", "headers", "once", "echo"]
CHUNK_BYTES = 64 * 1024


class RawModel:
    """A model server written against raw sockets, to send what HTTP libraries will not."""

    def __init__(
        self,
        mode: Mode,
        healed: threading.Event | None = None,
        drip_s: float = 0.1,
        size: int = 0,
    ) -> None:
        self.mode = mode
        self.healed = healed or threading.Event()
        self.drip_s = drip_s
        self.size = size
        self.port = free_port()
        self.requests = 0
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def start(self) -> RawModel:
        """Listen, and return once connections are accepted."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("raw model did not start")
        return self

    def stop(self) -> None:
        """Close every connection and stop listening."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> RawModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def count(self) -> int:
        """Requests read so far."""
        with self.lock:
            return self.requests

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while (event := await _read_request(reader)) is not None:
                with self.lock:
                    self.requests += 1
                if not await self._answer(event, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer(
        self, event: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection is to be closed."""
        ident = event.get("id") if isinstance(event, dict) else None
        body = orjson.dumps({"id": ident, "answer": "ok"})
        mode = "echo" if self.healed.is_set() else self.mode
        if mode in ("echo", "once"):
            writer.write(_head(200, len(body)) + body)
            await writer.drain()
            return mode == "echo"
        if mode == "drip":
            for byte in _head(200, len(body)) + body:
                writer.write(bytes([byte]))
                await writer.drain()
                if await _closed_within(reader, self.drip_s):
                    return False
            return True
        if mode == "chunked":
            await _send_chunked(writer, ident, self.size)
            return True
        if mode == "hangup":
            return False
        if mode == "garbage":
            writer.write(b"this is not HTTP\r\n\r\n")
            await writer.drain()
            return False
        if mode == "headers":
            writer.write(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 200_000)
            await writer.drain()
        if mode == "short":
            writer.write(_head(200, len(body) + 1000) + body)
            await writer.drain()
        await reader.read()  # short or silent: nothing more until the caller hangs up
        return False


async def _read_request(reader: asyncio.StreamReader) -> Any | None:
    """The JSON body of the next request on a connection, None when the caller closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    raw = await reader.readexactly(length)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


async def _closed_within(reader: asyncio.StreamReader, wait_s: float) -> bool:
    """Whether the caller closed the connection within `wait_s`."""
    try:
        return await asyncio.wait_for(reader.read(1), wait_s) == b""
    except TimeoutError:
        return False


async def _send_chunked(writer: asyncio.StreamWriter, ident: Any, size: int) -> None:
    """A 200 answer of about `size` bytes of JSON in chunks of CHUNK_BYTES."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    start, end = b'{"id":' + orjson.dumps(ident) + b',"pad":"', b'"}'
    body = start + b"x" * max(0, size - len(start) - len(end)) + end
    writer.write(head)
    for at in range(0, len(body), CHUNK_BYTES):
        chunk = body[at : at + CHUNK_BYTES]
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _head(status: int, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()

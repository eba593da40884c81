"""HTTP requests on libcurl's multi interface, driven by the asyncio event loop (pycurl).

logistik's model client before routing/http_pool.py, kept as a reference for
bench/http_clients.py: libcurl says which sockets to watch and when its next timeout is due;
the loop tells it when a socket is ready. Connections are pooled and reused by libcurl, every
request has a total deadline, redirects are not followed and an answer stops being read once it
passes a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pycurl

from logistik.errors import ModelCallError, one_line
from logistik.routing.http_pool import MAX_ERROR_TEXT, Reply

logger = logging.getLogger(__name__)

# libcurl's codes for a request that ended without a whole answer.
_TIMED_OUT = pycurl.E_OPERATION_TIMEDOUT
_CONNECT_FAILED = (pycurl.E_COULDNT_CONNECT, pycurl.E_COULDNT_RESOLVE_HOST)
_NOTHING = pycurl.E_GOT_NOTHING
_RETRY_AFTER = b"retry-after:"


@dataclass(eq=False, slots=True)
class _Transfer:
    """One reusable easy handle and the answer it is receiving."""

    handle: pycurl.Curl
    limit: int = 0
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    over: bool = False
    retry_after: bytes | None = None
    added: bool = False  # on the multi handle
    future: asyncio.Future[int] | None = None  # the libcurl code the transfer ended with

    def write(self, data: bytes) -> int | None:
        """Keep a piece of the answer; 0 (libcurl stops reading) once it passes the limit."""
        self.size += len(data)
        if self.size > self.limit:
            self.over = True
            return 0
        self.chunks.append(data)
        return None

    def header(self, line: bytes) -> None:
        """Keep Retry-After; the other headers are not needed."""
        if line[:12].lower() == _RETRY_AFTER:
            self.retry_after = line[12:].strip()


class CurlPool:
    """Every model call of the process on one libcurl multi handle."""

    def __init__(self, max_connections: int, headers: dict[str, str]) -> None:
        self._loop = asyncio.get_running_loop()
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        if max_connections > 0:
            self._multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, max_connections)
        self._timer: asyncio.TimerHandle | None = None
        self._idle: list[_Transfer] = []
        self._busy: dict[pycurl.Curl, _Transfer] = {}
        # "Expect:" stops libcurl from waiting for a 100 Continue before a large body.
        self._headers = [f"{k}: {v}" for k, v in headers.items()] + ["Expect:"]
        self._closed = False

    def _on_socket(self, what: int, fd: int, multi: object, data: object) -> None:
        loop = self._loop
        if what == pycurl.POLL_REMOVE:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            return
        if what & pycurl.POLL_IN:
            loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        else:
            loop.remove_reader(fd)
        if what & pycurl.POLL_OUT:
            loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        else:
            loop.remove_writer(fd)

    def _on_timer(self, timeout_ms: int) -> None:
        # Rescheduled exactly each time: libcurl names a deadline only when it changes, so a
        # timer left to fire early would not be told the next one.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if timeout_ms >= 0:
            self._timer = self._loop.call_later(
                timeout_ms / 1000, self._act, pycurl.SOCKET_TIMEOUT, 0
            )

    def _act(self, fd: int, event: int) -> None:
        """Let libcurl work on a ready socket (or its timeout), then settle finished requests."""
        if fd == pycurl.SOCKET_TIMEOUT:
            self._timer = None
        multi = self._multi
        try:
            while multi.socket_action(fd, event)[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            while True:
                queued, done, failed = multi.info_read()
                for handle in done:
                    self._settle(handle, pycurl.E_OK)
                for handle, code, _ in failed:
                    self._settle(handle, code)
                if not queued:
                    return
        except Exception as exc:  # pycurl.error, or a bug here: nothing else would end the calls
            # Never expected; but a request libcurl no longer drives would wait forever (and a
            # timer callback that raised would not be rescheduled).
            self._fail_all(f"libcurl failed: {exc}")

    def _fail_all(self, why: str) -> None:
        """End every request under way with `why`, in one log line; the pool goes on."""
        logger.error("model calls: %s; the %d call(s) under way are retried", why, len(self._busy))
        self._end_all(why)

    def _end_all(self, why: str) -> None:
        """Take every request under way off the multi handle; each fails with `why`."""
        for handle, transfer in self._busy.items():
            if transfer.added:
                transfer.added = False
                with contextlib.suppress(pycurl.error):
                    self._multi.remove_handle(handle)
            if transfer.future is not None and not transfer.future.done():
                transfer.future.set_exception(ModelCallError(why))

    def _settle(self, handle: pycurl.Curl, code: int) -> None:
        self._multi.remove_handle(handle)
        transfer = self._busy.get(handle)
        if transfer is None:
            return
        transfer.added = False
        if transfer.future is not None and not transfer.future.done():
            transfer.future.set_result(code)

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
        transfer = self._idle.pop() if self._idle else self._transfer()
        handle = transfer.handle
        transfer.limit = limit
        handle.setopt(pycurl.URL, url)
        handle.setopt(pycurl.POSTFIELDS, body)
        handle.setopt(pycurl.CUSTOMREQUEST, method)
        handle.setopt(pycurl.TIMEOUT_MS, max(1, int(timeout_s * 1000)))
        if headers:
            handle.setopt(
                pycurl.HTTPHEADER, self._headers + [f"{k}: {v}" for k, v in headers.items()]
            )
        future = transfer.future = self._loop.create_future()
        self._busy[handle] = transfer
        try:
            self._multi.add_handle(handle)
        except pycurl.error as exc:
            del self._busy[handle]
            self._recycle(transfer, bool(headers))
            raise ModelCallError(f"libcurl refused the call: {exc}") from exc
        transfer.added = True
        try:
            code = await future
            status = int(handle.getinfo(pycurl.RESPONSE_CODE))
            # Over the limit, the status and headers came: the answer is classified by them.
            over = transfer.over or code == pycurl.E_FILESIZE_EXCEEDED
            if code != pycurl.E_OK and not over:
                error = self._describe(handle, url, code, timeout_s)
                raise ModelCallError(error, code == _TIMED_OUT)
            if status == 0:
                raise ModelCallError("the model answered something that is not HTTP")
            retry_after = transfer.retry_after
            return Reply(
                status,
                None if over else b"".join(transfer.chunks),
                None if retry_after is None else retry_after.decode("latin-1"),
            )
        finally:
            if transfer.added:  # cancelled: libcurl drops the request and its connection
                transfer.added = False
                self._multi.remove_handle(handle)
            del self._busy[handle]
            self._recycle(transfer, bool(headers))

    def _transfer(self) -> _Transfer:
        handle = pycurl.Curl()
        transfer = _Transfer(handle)
        handle.setopt(pycurl.WRITEFUNCTION, transfer.write)
        handle.setopt(pycurl.HEADERFUNCTION, transfer.header)
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.FOLLOWLOCATION, 0)
        handle.setopt(pycurl.PROXY, "")  # models are called directly, whatever the environment
        handle.setopt(pycurl.HTTPHEADER, self._headers)
        return transfer

    def _recycle(self, transfer: _Transfer, headers_changed: bool) -> None:
        transfer.chunks = []
        transfer.size = 0
        transfer.over = False
        transfer.retry_after = None
        transfer.future = None
        if headers_changed:
            transfer.handle.setopt(pycurl.HTTPHEADER, self._headers)
        if self._closed:
            transfer.handle.close()
        else:
            self._idle.append(transfer)

    def _describe(self, handle: pycurl.Curl, url: str, code: int, timeout_s: float) -> str:
        if code == _TIMED_OUT:
            return f"timeout after {timeout_s:g} s"
        if code in _CONNECT_FAILED:
            errno = int(handle.getinfo(pycurl.OS_ERRNO))
            why = os.strerror(errno) if errno else handle.errstr()
            return f"cannot connect to {_target(url)}: {why}"
        if code == _NOTHING:
            return "the model closed the connection without answering"
        errno = int(handle.getinfo(pycurl.OS_ERRNO))
        text = handle.errstr() or f"libcurl error {code}"
        if errno:
            text = f"{text} ({os.strerror(errno)})"
        return one_line(text, MAX_ERROR_TEXT)

    def close(self) -> None:
        """Release every handle and connection; requests still under way are cancelled."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._end_all("the model client was closed")
        for transfer in self._idle:
            transfer.handle.close()
        self._idle.clear()
        self._multi.close()


def _target(url: str) -> str:
    """A URL's host and port, for connection errors (only then: they are rare)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"

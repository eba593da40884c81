"""The benchmark's model: answers POST /predict with the event's id and a label, on uvloop.

    python bench/model_server.py --port 8001 [--delay-s 2] [--request-cost-ms 2]
                                 [--server raw|aiohttp]

`raw` (the default) is a minimal HTTP/1.1 keep-alive server on asyncio's Protocol API: it parses
the event's JSON and answers it, and costs the machine far less CPU per request than any
framework here, so that the limit of a run is the router's, not the model's. `aiohttp` serves
the same answers with aiohttp.web, for comparison. `--delay-s` answers each request that much
later (a slow model), without holding a thread. `--request-cost-ms` spends that much CPU on
each request before answering, whatever its size, holding the server's one thread: a model
whose cost is per request (a GPU call, a framework's fixed overhead), for micro-batching. A
request whose body is a JSON list gets a list of as many answers (a batch).

The raw server also answers, for the HTTP client checks: /redirect with a 307 to /predict,
/big with a JSON answer of BIG_ANSWER_BYTES, /slow after SLOW_S, and GET /stats with how many
connections and requests it has seen."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

import orjson
from aiohttp import web

from benchkit import new_event_loop

MAX_HEADER_BYTES = 16_384
MAX_BODY_BYTES = 1_000_000
BIG_ANSWER_BYTES = 2_000_000
SLOW_S = 2.0
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
REDIRECT = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /predict\r\nContent-Length: 0\r\n\r\n"
JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "


def answer(body: bytes) -> bytes:
    """The model's JSON answer to one event (its id, a label and a score), or to a list of them."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        event = {}
    if isinstance(event, list):
        return orjson.dumps([labelled(item) for item in event])
    return orjson.dumps(labelled(event))


def labelled(event: object) -> dict[str, object]:
    """One event's answer."""
    ident = event.get("id") if isinstance(event, dict) else None
    return {"id": ident, "label": "cat", "score": 0.93}


def spend_cpu(seconds: float) -> None:
    """Keep the CPU busy for this long: the model's cost of one request."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def content_length(head: bytes) -> int | None:
    """The Content-Length of a request head (0 when absent); None when it is not a number."""
    lowered = head.lower()
    at = lowered.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = lowered.find(b"\r\n", at + 2)
    try:
        return int(lowered[at + 17 : end if end >= 0 else None])
    except ValueError:
        return None


def json_response(payload: bytes) -> bytes:
    """A 200 response carrying a JSON body."""
    return b"%s%d\r\n\r\n%s" % (JSON_HEAD, len(payload), payload)


@dataclass
class Tally:
    """What the server has seen, for /stats."""

    connections: int = 0
    requests: int = 0


class ModelProtocol(asyncio.Protocol):
    """One keep-alive connection: requests in order, each answered as soon as it is complete."""

    def __init__(self, delay_s: float, tally: Tally, cost_s: float = 0.0) -> None:
        self._delay_s = delay_s
        self._cost_s = cost_s
        self._tally = tally
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to answer on."""
        self._tally.connections += 1
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the transport: answers still waiting for their delay are dropped."""
        self._transport = None

    def data_received(self, data: bytes) -> None:
        """Answer every complete request in the buffer."""
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_BYTES:
                    self._refuse()
                return
            head = bytes(self._buffer[:end])
            length = content_length(head)
            if length is None or length > MAX_BODY_BYTES:
                self._refuse()
                return
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            self._tally.requests += 1
            self._answer(head[: head.find(b" HTTP/")], body)

    def _answer(self, request_line: bytes, body: bytes) -> None:
        """Answer one request by its path: a check path, or else the model's answer."""
        path = request_line.partition(b" ")[2]
        if path == b"/redirect":
            self._send(REDIRECT)
        elif path == b"/big":
            self._send(json_response(b'{"filler":"%s"}' % (b"x" * (BIG_ANSWER_BYTES - 13))))
        elif path == b"/slow":
            self._loop.call_later(SLOW_S, self._send, json_response(answer(body)))
        elif path == b"/stats":
            self._send(json_response(orjson.dumps(asdict(self._tally))))
        elif self._cost_s > 0:
            spend_cpu(self._cost_s)
            self._send(json_response(answer(body)))
        elif self._delay_s > 0:
            self._loop.call_later(self._delay_s, self._send, json_response(answer(body)))
        else:
            self._send(json_response(answer(body)))

    def _send(self, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(payload)

    def _refuse(self) -> None:
        if self._transport is not None:
            self._transport.write(BAD_REQUEST)
            self._transport.close()


async def serve_raw(port: int, delay_s: float, cost_s: float = 0.0) -> None:
    """Serve with ModelProtocol until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    tally = Tally()
    server = await loop.create_server(
        lambda: ModelProtocol(delay_s, tally, cost_s), "127.0.0.1", port, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def serve_aiohttp(port: int, delay_s: float) -> None:
    """Serve the same answers with aiohttp.web until SIGTERM or SIGINT."""

    async def predict(request: web.Request) -> web.Response:
        body = answer(await request.read())
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/predict", predict)
    web.run_app(
        app, host="127.0.0.1", port=port, print=None, access_log=None, loop=new_event_loop()
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the model on 127.0.0.1 until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-s", type=float, default=0.0, help="answer this much later")
    parser.add_argument(
        "--request-cost-ms", type=float, default=0.0, help="CPU spent on each request (raw)"
    )
    parser.add_argument("--server", choices=("raw", "aiohttp"), default="raw")
    args = parser.parse_args(argv)
    if args.server == "aiohttp":
        serve_aiohttp(args.port, args.delay_s)
        return
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=new_event_loop) as r:
        r.run(serve_raw(args.port, args.delay_s, args.request_cost_ms / 1000))


if __name__ == "__main__":
    main()

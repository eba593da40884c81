"""Compares asyncio HTTP clients for model calls: CPU per request at 64 in flight, small JSON.

    python bench/http_clients.py [--requests N] [--concurrency 64] [--rounds N] [--servers 1]
                                 [--clients aiohttp,pyreqwest,...] [--report PATH]

Each client runs in a process of its own, in turn (round after round), against one raw model
server (bench/model_server.py; `--servers N` spreads the calls over N of them, as a router
calling N models does) on loopback, on uvloop as `logistik run` is. Every client is
set up as a router needs it: a total timeout per request, a pool of at most `--concurrency`
connections, redirects not followed, answers over ANSWER_LIMIT_BYTES refused (the
`-unbounded` variants read the whole answer, whatever its size). Before it is
measured, each client is checked for those four: a request to /slow with a 0.3 s timeout must
fail within a second, /redirect must come back as the 307 itself, /big (2 MB) must be refused,
and the measured requests must open no more connections than the concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from statistics import median
from typing import Any, Protocol

import orjson

from benchkit import (
    BenchError,
    Child,
    EventMaker,
    cpu_seconds,
    die_with_parent,
    event_id,
    free_port,
    machine,
    new_event_loop,
    percentiles,
    script,
    wait_for_port,
)
from logistik.errors import ModelCallError
from logistik.routing.http_pool import HttpPool

ANSWER_LIMIT_BYTES = 1_000_000
CALL_TIMEOUT_S = 10.0
CHECK_TIMEOUT_S = 0.3
JSON_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
CLIENT_PACKAGES = {
    "aiohttp": "aiohttp",
    "aiohttp-unbounded": "aiohttp",
    "pyreqwest": "pyreqwest",
    "pyreqwest-unbounded": "pyreqwest",
    "curl-cffi": "curl-cffi",
    "pycurl": "pycurl",
    "httptools": "httptools",
    "httpx": "httpx",
}
PROPERTIES = ("timeouts", "pooling", "no redirects", "answer limit")


class AnswerTooLargeError(BenchError):
    """The model's answer is larger than the limit."""


class Caller(Protocol):
    """POSTs one JSON body and returns the status and the answer, within a total timeout."""

    async def post(self, url: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """TimeoutError when it takes longer than timeout_s; AnswerTooLargeError over the limit."""
        ...


ClientFactory = Callable[[int], AbstractAsyncContextManager[Caller]]


# ---------------------------------------------------------------- the clients


class AiohttpCaller:
    """aiohttp as logistik's model client used it before pycurl, with a bounded read."""

    def __init__(self, session: Any) -> None:
        import aiohttp

        self._session = session
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def post(self, url: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """One call; the answer is read in chunks and refused once it passes the limit."""
        import aiohttp

        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(total=timeout_s)
        async with self._session.post(
            url, data=body, timeout=timeout, allow_redirects=False
        ) as response:
            if (response.content_length or 0) > ANSWER_LIMIT_BYTES:
                raise AnswerTooLargeError(f"Content-Length {response.content_length}")
            payload = b""
            while chunk := await response.content.read(ANSWER_LIMIT_BYTES + 1 - len(payload)):
                payload += chunk
                if len(payload) > ANSWER_LIMIT_BYTES:
                    raise AnswerTooLargeError("answer over the limit")
            return int(response.status), payload


class AiohttpUnboundedCaller(AiohttpCaller):
    """aiohttp as logistik's ModelClient once called it: `response.read()`, no limit."""

    async def post(self, url: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """One call, the whole answer read whatever its size."""
        import aiohttp

        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(total=timeout_s)
        async with self._session.post(
            url, data=body, timeout=timeout, allow_redirects=False
        ) as response:
            return int(response.status), await response.read()


@asynccontextmanager
async def aiohttp_session(concurrency: int) -> AsyncIterator[Any]:
    """aiohttp's ClientSession with logistik's settings."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300)
    async with aiohttp.ClientSession(
        connector=connector, headers=JSON_HEADERS, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


@asynccontextmanager
async def aiohttp_unbounded_client(concurrency: int) -> AsyncIterator[Caller]:
    """aiohttp reading the whole answer, whatever its size."""
    async with aiohttp_session(concurrency) as session:
        yield AiohttpUnboundedCaller(session)


@asynccontextmanager
async def aiohttp_client(concurrency: int) -> AsyncIterator[Caller]:
    """aiohttp with logistik's settings and a bounded read."""
    async with aiohttp_session(concurrency) as session:
        yield AiohttpCaller(session)


class PyreqwestCaller:
    """pyreqwest (Rust reqwest and hyper on a Tokio thread), answer read with a limit."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._timeouts: dict[float, timedelta] = {}

    async def post(self, url: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """One call, streamed so that the answer can be refused past the limit."""
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = timedelta(seconds=timeout_s)
        request = self._client.post(url).body_bytes(body).timeout(timeout).build_streamed()
        async with request as response:
            payload = await response.body_reader.read(ANSWER_LIMIT_BYTES + 1)
            if payload is not None and len(payload) > ANSWER_LIMIT_BYTES:
                raise AnswerTooLargeError("answer over the limit")
            return int(response.status), b"" if payload is None else bytes(payload)


class PyreqwestUnboundedCaller(PyreqwestCaller):
    """pyreqwest reading the whole answer in Rust before returning (no size limit)."""

    async def post(self, url: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """One call, the whole answer read whatever its size."""
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = timedelta(seconds=timeout_s)
        response = await self._client.post(url).body_bytes(body).timeout(timeout).build().send()
        return int(response.status), bytes(await response.bytes())


@asynccontextmanager
async def pyreqwest_unbounded_client(concurrency: int) -> AsyncIterator[Caller]:
    """pyreqwest without the streamed, bounded read."""
    async with pyreqwest_session(concurrency) as client:
        yield PyreqwestUnboundedCaller(client)


@asynccontextmanager
async def pyreqwest_client(concurrency: int) -> AsyncIterator[Caller]:
    """pyreqwest with a bounded read of the answer."""
    async with pyreqwest_session(concurrency) as client:
        yield PyreqwestCaller(client)


@asynccontextmanager
async def pyreqwest_session(concurrency: int) -> AsyncIterator[Any]:
    """A pyreqwest Client: pooled, at most `concurrency` requests in flight, no redirects."""
    from pyreqwest.client import ClientBuilder

    builder = (
        ClientBuilder()
        .max_connections(concurrency)
        .pool_max_idle_per_host(concurrency)
        .follow_redirects(False)
        .default_headers(JSON_HEADERS)
        .timeout(timedelta(seconds=CALL_TIMEOUT_S))
    )
    async with builder.build() as client:
        yield client


class CurlCffiCaller:
    """curl-cffi's AsyncSession (libcurl's multi interface driven by the event loop)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    async def post(self, url: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """One call; libcurl refuses an answer past CURLOPT_MAXFILESIZE (error 63)."""
        from curl_cffi.requests.exceptions import RequestException, Timeout

        try:
            response = await self._session.post(url, data=body, timeout=timeout_s)
        except Timeout as exc:
            raise TimeoutError(str(exc)) from None
        except RequestException as exc:
            if getattr(exc, "code", None) == 63:
                raise AnswerTooLargeError(str(exc)) from None
            raise
        return int(response.status_code), bytes(response.content)


@asynccontextmanager
async def curl_cffi_client(concurrency: int) -> AsyncIterator[Caller]:
    """A curl-cffi AsyncSession: `concurrency` handles, no redirects, a size limit."""
    from curl_cffi import CurlOpt
    from curl_cffi.requests import AsyncSession

    async with AsyncSession(
        max_clients=concurrency,
        headers=JSON_HEADERS,
        allow_redirects=False,
        timeout=CALL_TIMEOUT_S,
        default_headers=False,
        curl_options={CurlOpt.MAXFILESIZE_LARGE: ANSWER_LIMIT_BYTES},
    ) as session:
        yield CurlCffiCaller(session)


class PycurlCaller:
    """pycurl as logistik's model client used it: CurlPool (libcurl's multi handle)."""

    def __init__(self, concurrency: int) -> None:
        from curl_pool import CurlPool

        self.pool: Any = CurlPool(concurrency, JSON_HEADERS)

    async def post(self, url: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        try:
            reply = await self.pool.request("POST", url, body, timeout_s, ANSWER_LIMIT_BYTES)
        except ModelCallError as exc:
            if exc.timed_out:
                raise TimeoutError(str(exc)) from exc
            raise BenchError(str(exc)) from exc
        if reply.body is None:
            raise AnswerTooLargeError(f"an answer over {ANSWER_LIMIT_BYTES} bytes")
        return reply.status, reply.body


@asynccontextmanager
async def pycurl_client(
    concurrency: int, kind: type[PycurlCaller] = PycurlCaller
) -> AsyncIterator[Caller]:
    """logistik's former pycurl client (or `kind`) with at most `concurrency` connections."""
    caller = kind(concurrency)
    try:
        yield caller
    finally:
        caller.pool.close()


class HttptoolsCaller(PycurlCaller):
    """logistik's model client: HttpPool (the loop's own connections, httptools parsing)."""

    def __init__(self, concurrency: int) -> None:
        self.pool = HttpPool(concurrency, JSON_HEADERS)


@asynccontextmanager
async def httptools_client(concurrency: int) -> AsyncIterator[Caller]:
    """logistik's model client with at most `concurrency` connections."""
    async with pycurl_client(concurrency, HttptoolsCaller) as caller:
        yield caller


class HttpxCaller:
    """httpx's AsyncClient, the answer streamed so that it can be refused past the limit."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def post(self, url: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """One call; httpx's timeouts are per phase, so a total one is asyncio's."""
        async with asyncio.timeout(timeout_s):
            async with self._client.stream("POST", url, content=body) as response:
                payload = b""
                async for chunk in response.aiter_raw():
                    payload += chunk
                    if len(payload) > ANSWER_LIMIT_BYTES:
                        raise AnswerTooLargeError("answer over the limit")
                return int(response.status_code), payload


@asynccontextmanager
async def httpx_client(concurrency: int) -> AsyncIterator[Caller]:
    """httpx's AsyncClient with a pool of `concurrency` connections, no redirects."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        limits=limits, headers=JSON_HEADERS, follow_redirects=False, timeout=CALL_TIMEOUT_S
    ) as client:
        yield HttpxCaller(client)


CLIENTS: dict[str, ClientFactory] = {
    "aiohttp": aiohttp_client,
    "aiohttp-unbounded": aiohttp_unbounded_client,
    "pyreqwest": pyreqwest_client,
    "pyreqwest-unbounded": pyreqwest_unbounded_client,
    "curl-cffi": curl_cffi_client,
    "pycurl": pycurl_client,
    "httptools": httptools_client,
    "httpx": httpx_client,
}


def installed(name: str) -> str | None:
    """The installed version of a client's package, None when it is not installed."""
    try:
        return importlib.metadata.version(CLIENT_PACKAGES[name])
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- one client, in its process


async def drive(
    caller: Caller, urls: Sequence[str], bodies: Sequence[bytes], concurrency: int
) -> list[float]:
    """POST every body with `concurrency` requests in flight, spread over `urls` (each in-flight
    slot keeps to one); each request's latency in ms."""
    latencies: list[float] = []
    pending = iter(bodies)

    async def worker(url: str) -> None:
        for body in pending:
            started = time.perf_counter()
            status, _ = await caller.post(url, body, CALL_TIMEOUT_S)
            if status != 200:
                raise BenchError(f"the model answered HTTP {status}")
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker(urls[k % len(urls)]) for k in range(concurrency)))
    return latencies


async def check(what: str, work: Awaitable[object], expect: type[BaseException]) -> str:
    """'yes' when `work` raises `expect` within a second, else why not."""
    try:
        async with asyncio.timeout(1.0):
            result = await work
    except expect:
        return "yes"
    except TimeoutError:
        return f"no: {what} took over 1 s"
    except Exception as exc:
        return f"no: {what} raised {type(exc).__name__}: {exc}"[:120]
    status = result[0] if isinstance(result, tuple) else result
    return f"no: {what} came back (HTTP {status})"


async def connections(caller: Caller, bases: Sequence[str]) -> int:
    """How many connections the model servers have accepted so far."""
    total = 0
    for base in bases:
        _, payload = await caller.post(f"{base}/stats", b"{}", CALL_TIMEOUT_S)
        total += int(orjson.loads(payload)["connections"])
    return total


async def redirect_kept(caller: Caller, base: str) -> str:
    """'yes' when a 307 comes back as such instead of being followed."""
    status, _ = await caller.post(f"{base}/redirect", b"{}", CALL_TIMEOUT_S)
    return "yes" if status == 307 else f"no: got HTTP {status}"


async def measure_client(
    name: str, bases: Sequence[str], requests: int, concurrency: int
) -> dict[str, Any]:
    """Check the client's four properties, warm it up, then time `requests` calls."""
    maker = EventMaker(seed=1)
    bodies = [maker.make(event_id("call", i), i)[1] for i in range(requests)]
    base = bases[0]  # the properties are checked on the first server
    urls = [f"{b}/predict" for b in bases]
    async with CLIENTS[name](concurrency) as caller:
        properties = {
            "timeouts": await check(
                "a 2 s answer", caller.post(f"{base}/slow", b"{}", CHECK_TIMEOUT_S), TimeoutError
            ),
            "no redirects": await redirect_kept(caller, base),
            "answer limit": await check(
                "a 2 MB answer",
                caller.post(f"{base}/big", b"{}", CALL_TIMEOUT_S),
                AnswerTooLargeError,
            ),
        }
        await drive(caller, urls, bodies[: concurrency * 8], concurrency)
        opened_before = await connections(caller, bases)
        cpu_before, started = time.process_time(), time.perf_counter()
        latencies = await drive(caller, urls, bodies, concurrency)
        seconds = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_before
        opened = await connections(caller, bases) - opened_before
    properties["pooling"] = (
        "yes" if opened <= concurrency else f"no: {opened} connections for {requests} calls"
    )
    return {
        "client": name,
        "version": installed(name),
        "requests": requests,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "latency_ms": percentiles(latencies),
        "connections_opened": opened,
        "properties": {p: properties[p] for p in PROPERTIES},
    }


def run_one(args: argparse.Namespace) -> None:
    """Measure one client and print the result as one JSON line."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        result = runner.run(
            measure_client(args.run_client, args.base.split(","), args.requests, args.concurrency)
        )
    print(orjson.dumps(result).decode(), flush=True)


# ---------------------------------------------------------------- the comparison


def spawn_client(
    name: str, bases: Sequence[str], requests: int, concurrency: int
) -> dict[str, Any]:
    """Run one client's measurement in a process of its own and return its result."""
    argv = [
        sys.executable,
        __file__,
        "--run-client",
        name,
        "--base",
        ",".join(bases),
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
    ]
    done = subprocess.run(
        argv, capture_output=True, timeout=300, check=False, preexec_fn=die_with_parent
    )
    if done.returncode != 0:
        raise BenchError(f"{name} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


async def compare(
    clients: Sequence[str], requests: int, concurrency: int, rounds: int, servers: int = 1
) -> dict[str, Any]:
    """Every client in turn, `rounds` times, against `servers` model servers (the calls in
    flight spread evenly over them); the raw results."""
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="logistik-http-") as tmp:
        async with AsyncExitStack() as stack:
            models, bases = [], []
            for k in range(servers):
                port = free_port()
                model = Child(
                    "the model server",
                    [sys.executable, script("model_server.py"), "--port", str(port)],
                    Path(tmp) / f"model-{k}.log",
                    Path(tmp),
                ).start()
                stack.callback(model.stop)
                await wait_for_port(port, model)
                models.append(model)
                bases.append(f"http://127.0.0.1:{port}")
            for round_ in range(1, rounds + 1):
                for name in clients:
                    print(f"{name}, round {round_} ...", file=sys.stderr, flush=True)
                    model_before = sum(cpu_seconds(m.pid) for m in models)
                    result = await asyncio.to_thread(
                        spawn_client, name, bases, requests, concurrency
                    )
                    # The models' CPU over the whole child run, checks and warm-up included.
                    result["model_cpu_s"] = sum(cpu_seconds(m.pid) for m in models) - model_before
                    result["round"] = round_
                    runs.append(result)
    return {
        "machine": machine(),
        "python": sys.version.split()[0],
        "parameters": {
            "requests": requests,
            "concurrency": concurrency,
            "rounds": rounds,
            "servers": servers,
        },
        "runs": runs,
    }


def summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per client: medians over its rounds."""
    rows = []
    names = list(dict.fromkeys(r["client"] for r in report["runs"]))
    for name in names:
        runs = [r for r in report["runs"] if r["client"] == name]
        rows.append(
            {
                "client": name,
                "version": runs[0]["version"],
                "requests_per_s": median(r["requests"] / r["seconds"] for r in runs),
                "cpu_us_per_request": median(r["cpu_s"] / r["requests"] * 1e6 for r in runs),
                "cpu_us_range": (
                    min(r["cpu_s"] / r["requests"] * 1e6 for r in runs),
                    max(r["cpu_s"] / r["requests"] * 1e6 for r in runs),
                ),
                "p50_ms": median(r["latency_ms"]["p50"] for r in runs),
                "p99_ms": median(r["latency_ms"]["p99"] for r in runs),
                "properties": runs[-1]["properties"],
            }
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table, cheapest client first."""
    params = report["parameters"]
    servers = params.get("servers", 1)
    spread = f" over {servers} model servers" if servers > 1 else ""
    rows = sorted(summary(report), key=lambda r: r["cpu_us_per_request"])
    lines = [
        f"{params['requests']:,} POSTs of 300-1000 B JSON per run, {params['concurrency']} in "
        f"flight{spread}, {params['rounds']} round(s), medians; {report['machine']['cores']} cores "
        f"({report['machine']['cpu'] or 'unknown CPU'}), Python {report['python']}, uvloop.",
        "",
        "| client | requests/s | CPU µs/request (range) | p50 ms | p99 ms | "
        + " | ".join(PROPERTIES)
        + " |",
        "|---" * (5 + len(PROPERTIES)) + "|",
    ]
    for row in rows:
        low, high = row["cpu_us_range"]
        lines.append(
            f"| {row['client']} {row['version']} | {row['requests_per_s']:,.0f} | "
            f"{row['cpu_us_per_request']:.0f} ({low:.0f}-{high:.0f}) | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | " + " | ".join(row["properties"][p] for p in PROPERTIES) + " |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000, help="measured calls per run")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument("--rounds", type=int, default=3, help="runs per client, taken in turn")
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="model servers (one host:port each) the calls in flight are spread over",
    )
    parser.add_argument(
        "--clients",
        default=",".join(CLIENTS),
        help=f"comma-separated subset of {','.join(CLIENTS)} (those not installed are skipped)",
    )
    parser.add_argument("--report", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--markdown", metavar="REPORT", help="print the table of a JSON report")
    parser.add_argument("--run-client", choices=tuple(CLIENTS), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    """Compare the clients and print the table (or measure one client, internally)."""
    args = parse_args()
    if args.run_client:
        run_one(args)
        return
    if args.markdown:
        print(markdown(orjson.loads(Path(args.markdown).read_bytes())))
        return
    wanted = [c.strip() for c in str(args.clients).split(",") if c.strip()]
    unknown = [c for c in wanted if c not in CLIENTS]
    if unknown:
        sys.exit(f"--clients: unknown {', '.join(unknown)}; choose from {', '.join(CLIENTS)}")
    missing = [c for c in wanted if installed(c) is None]
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}", file=sys.stderr)
    clients = [c for c in wanted if c not in missing]
    try:
        report = asyncio.run(
            compare(clients, args.requests, args.concurrency, args.rounds, args.servers)
        )
    except BenchError as exc:
        sys.exit(f"benchmark failed: {exc}")
    if args.report:
        Path(args.report).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(markdown(report))


if __name__ == "__main__":
    main()

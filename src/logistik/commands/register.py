"""`logistik register`: run a model's command and keep it registered in Consul while it runs.

The command runs as a child in its own process group (so a terminal's Ctrl-C reaches it once,
through us) and is sent SIGTERM by Linux if `register` itself dies. The service is registered
with the agent's API (PUT) with a TTL check kept passing every heartbeat; if Consul cannot be
reached the child keeps running and registration is retried with back-off. SIGTERM, SIGINT and
SIGHUP are forwarded to the child. When the child exits the service is deregistered and
`register` exits with the child's exit code (128 + the signal when a signal killed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from logistik.children import die_with_parent
from logistik.control.consul import ConsulClient, ConsulError, agent_url, go_duration
from logistik.errors import LogistikError
from logistik.routing.backoff import Backoff

logger = logging.getLogger("logistik.register")

EXIT_CANNOT_START = 127
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MIN_DEREGISTER_AFTER_S = 60.0  # Consul's own minimum for DeregisterCriticalServiceAfter


class CommandError(LogistikError):
    """The command to supervise could not be started."""


@dataclass(frozen=True)
class Registration:
    """What `register` tells Consul about the service."""

    name: str
    service_id: str
    address: str | None
    port: int | None
    tags: tuple[str, ...]
    ttl_s: float

    @property
    def check_id(self) -> str:
        """The id Consul gives the service's only check."""
        return f"service:{self.service_id}"

    def definition(self) -> dict[str, Any]:
        """The body of PUT /v1/agent/service/register."""
        deregister_after_s = max(MIN_DEREGISTER_AFTER_S, 3 * self.ttl_s)
        body: dict[str, Any] = {
            "Name": self.name,
            "ID": self.service_id,
            "Tags": list(self.tags),
            "Check": {
                "TTL": go_duration(self.ttl_s),
                "DeregisterCriticalServiceAfter": go_duration(deregister_after_s),
                "Notes": f"kept passing by logistik register (pid {os.getpid()})",
            },
        }
        if self.address:
            body["Address"] = self.address
        if self.port is not None:
            body["Port"] = self.port
        return body


class Keeper:
    """Registers the service, keeps its TTL check passing, registers again if Consul forgot it."""

    def __init__(
        self, client: ConsulClient, registration: Registration, heartbeat_s: float
    ) -> None:
        self.client = client
        self.registration = registration
        self.heartbeat_s = heartbeat_s
        self.registered = False
        self.ever_registered = False
        self.failures = 0
        cap_s = max(heartbeat_s, min(registration.ttl_s, 30.0))
        self.backoff = Backoff(base_s=min(0.5, heartbeat_s), cap_s=cap_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat (or retry) until `stop` is set; a request in flight is finished first."""
        while not stop.is_set():
            delay_s = await self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)

    async def step(self) -> float:
        """One registration or heartbeat; returns how long to wait before the next."""
        try:
            just_registered = await self._ensure_registered()
            if not await self.client.pass_check(self.registration.check_id):
                if just_registered:
                    raise ConsulError(f"Consul does not know check {self.registration.check_id}")
                self.registered = False
                logger.warning("Consul no longer knows %s; registering it again", self._what())
                return 0.0
        except ConsulError as exc:
            return self._failed(exc)
        if self.failures:
            logger.warning("Consul answers again after %d failed attempt(s)", self.failures)
            self.failures = 0
        return self.heartbeat_s

    async def _ensure_registered(self) -> bool:
        if self.registered:
            return False
        await self.client.register_service(self.registration.definition())
        self.registered = self.ever_registered = True
        logger.info("registered %s with Consul at %s", self._what(), self.client.url)
        return True

    def _failed(self, exc: ConsulError) -> float:
        self.failures += 1
        if self.failures == 1:
            logger.warning(
                "cannot keep %s registered: %s; the command keeps running, retrying with back-off",
                self._what(),
                exc,
            )
        else:
            logger.debug("attempt %d failed: %s", self.failures, exc)
        return self.backoff.delay_s(self.failures)

    def _what(self) -> str:
        return f"service {self.registration.name} (id {self.registration.service_id})"


async def start_command(command: tuple[str, ...]) -> asyncio.subprocess.Process:
    """Start the command as a child in its own process group; CommandError if it cannot start."""
    try:
        return await asyncio.create_subprocess_exec(
            *command, process_group=0, preexec_fn=die_with_parent
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CommandError(f"cannot start {command[0]}: {reason}") from None


def exit_code(returncode: int) -> int:
    """A shell-style exit code: the child's own, or 128 + the signal that killed it."""
    return returncode if returncode >= 0 else 128 - returncode


def forward_signals(child: asyncio.subprocess.Process) -> None:
    """Pass SIGTERM, SIGINT and SIGHUP on to the child while it runs."""
    loop = asyncio.get_running_loop()
    for signum in FORWARDED_SIGNALS:
        loop.add_signal_handler(signum, _forward, child, signum)


def _forward(child: asyncio.subprocess.Process, signum: signal.Signals) -> None:
    if child.returncode is None:
        logger.info("forwarding %s to pid %d", signum.name, child.pid)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)


async def deregister(client: ConsulClient, registration: Registration, registered: bool) -> None:
    """Take the service out of Consul; on failure say how it will go away anyway."""
    try:
        known = await client.deregister_service(registration.service_id)
    except ConsulError as exc:
        if not registered:
            logger.debug("nothing to deregister: %s", exc)
            return
        logger.warning(
            "could not deregister %s: %s; Consul drops it once its check has been critical for %s",
            registration.service_id,
            exc,
            registration.definition()["Check"]["DeregisterCriticalServiceAfter"],
        )
        return
    if known:
        logger.info("deregistered %s", registration.service_id)


async def supervise(
    command: tuple[str, ...], registration: Registration, url: str, heartbeat_s: float
) -> int:
    """Run the command, keep it registered while it runs, deregister; the exit code to use."""
    child = await start_command(command)
    logger.info("started %s (pid %d)", command[0], child.pid)
    forward_signals(child)
    token = os.environ.get("CONSUL_HTTP_TOKEN") or None
    async with ConsulClient(url, token=token) as client:
        stop = asyncio.Event()
        keeper = Keeper(client, registration, heartbeat_s)
        keeping = asyncio.create_task(keeper.run(stop))
        returncode = await child.wait()
        logger.info("%s exited with code %d", command[0], exit_code(returncode))
        stop.set()
        await keeping
        await deregister(client, registration, keeper.ever_registered)
    return exit_code(returncode)


def setup_logging(verbosity: int) -> None:
    """Warnings by default, info with -v, debug with -vv; one line per record on stderr."""
    level = (logging.WARNING, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"logistik register: {message}", err=True)
    sys.exit(code)


def _address(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value and value.strip("[]") in ("0.0.0.0", "::"):
        raise click.BadParameter("Consul refuses 0.0.0.0 and ::; give the address others reach")
    return value


def _agent(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return agent_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "allow_interspersed_args": False}
)
@click.option("-v", "--verbose", count=True, help="More log lines (-v info, -vv debug).")
@click.option("--id", "service_id", metavar="ID", help="Service id, unique on the agent [NAME].")
@click.option(
    "--address",
    metavar="ADDRESS",
    callback=_address,
    help="Address the model is reached at [the agent's node address].",
)
@click.option("--port", type=click.IntRange(0, 65535), help="Port the model is reached at.")
@click.option(
    "--consul-agent",
    default="localhost:8500",
    show_default=True,
    metavar="HOST[:PORT]",
    callback=_agent,
    help="Consul agent to register with (port 8500 unless given; an http(s):// URL works too).",
)
@click.option("--tags", multiple=True, metavar="TAG", help="A service tag; repeat for more.")
@click.option(
    "--ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds Consul waits for a heartbeat before the service turns critical.",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between heartbeats [TTL/3].",
)
@click.argument("name")
@click.argument("command", nargs=-1, required=True, metavar="-- COMMAND [ARGS]...")
def register(
    verbose: int,
    service_id: str | None,
    address: str | None,
    port: int | None,
    consul_agent: str,
    tags: tuple[str, ...],
    ttl: float,
    heartbeat: float | None,
    name: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND and keep it registered in Consul as service NAME while it runs.

    \b
    Example:
      logistik register --address 10.60.1.125 --port 5052 --consul-agent=10.60.1.124 \\
        --tags logistik --tags model=model --tags node=3 --tags hostname=mk2 \\
        --tags version=v1 my_model -- gunicorn --bind 0.0.0.0:5052 app:app
    """
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise click.UsageError("missing COMMAND after NAME --")
    heartbeat_s = heartbeat if heartbeat is not None else ttl / 3
    if heartbeat_s >= ttl:
        raise click.BadParameter("must be shorter than --ttl", param_hint="--heartbeat")
    setup_logging(verbose)
    registration = Registration(name, service_id or name, address, port, tags, ttl)
    try:
        code = asyncio.run(supervise(command, registration, consul_agent, heartbeat_s))
    except CommandError as exc:
        _fail(str(exc), EXIT_CANNOT_START)
    except KeyboardInterrupt:
        _fail("interrupted before the command started", 128 + signal.SIGINT)
    sys.exit(code)


if __name__ == "__main__":
    register(prog_name="logistik register")

"""The `logistik` command."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import click

from logistik.commands.console import EXIT_ERROR, fail, optional_config, required_config
from logistik.commands.handlers import handlers
from logistik.commands.register import register
from logistik.commands.replay import replay
from logistik.commands.tail import tail
from logistik.config import EMBEDDED, Config
from logistik.errors import LogistikError
from logistik.kafka.embedded import EmbeddedBroker
from logistik.observe.logs import setup_logging

logger = logging.getLogger("logistik")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (faster sockets), else asyncio's own."""
    if os.environ.get("LK_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="logistik")
def main() -> None:
    """Route events from Kafka to models over HTTP and their answers back to Kafka."""


@main.command()
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="YAML config (default: $LK_CONFIG, else logistik.yaml).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Overrides the config's log_level.",
)
def run(config_file: str | None, log_level: str | None) -> None:
    """Run the router: consume every topic that has a handler, route, publish, commit.

    \b
    Example:
      logistik run --config logistik.yaml
    """
    config = required_config(config_file)
    setup_logging(log_level or config.log_level, config.log_format == "json")
    broker: EmbeddedBroker | None = None
    try:
        if config.kafka.bootstrap_servers == EMBEDDED:
            broker = EmbeddedBroker(config.kafka.embedded_port).start()
            kafka = config.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
            config = config.model_copy(update={"kafka": kafka})
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_run(config))
    except LogistikError as exc:
        fail(str(exc), EXIT_ERROR)
    finally:
        if broker is not None:
            broker.stop()


async def _run(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The router's imports are not needed by other commands.
    from logistik.process import Runner, tune_gc

    await Runner(config, after_start=tune_gc).run(stop)


@main.command()
@click.argument("topic")
@click.argument("source", type=click.Path(allow_dash=True, dir_okay=False), default="-")
@click.option("--config", "config_file", metavar="FILE", help="YAML config for the broker.")
@click.option("--bootstrap-servers", help="Overrides kafka.bootstrap_servers.")
@click.option(
    "--timeout-s",
    type=float,
    default=30.0,
    show_default=True,
    help="How long to wait for the broker to acknowledge every event.",
)
def send(
    topic: str,
    source: str,
    config_file: str | None,
    bootstrap_servers: str | None,
    timeout_s: float,
) -> None:
    """Produce events (JSON lines) from FILE or stdin to TOPIC; every line is checked first.

    \b
    Example:
      echo '{"verb": "detect", "actor": {"id": "u1"}}' | logistik send event-v2-detect
    """
    from logistik.commands.send import read_events, send_events

    kafka = optional_config(config_file).kafka
    servers = bootstrap_servers or kafka.bootstrap_servers
    kafka = kafka.model_copy(update={"bootstrap_servers": servers})
    try:
        with click.open_file(source, "rb") as stream:
            records = read_events(stream, "stdin" if source == "-" else source)
        count = send_events(kafka, topic, records, timeout_s)
    except LogistikError as exc:
        fail(str(exc), EXIT_ERROR)
    click.echo(f"sent {count} event(s) to {topic}", err=True)


@main.command()
@click.option("--url", help="Base URL of a running logistik (default: the config's web host/port).")
@click.option("--config", "config_file", metavar="FILE", help="YAML config naming the web port.")
@click.option("--timeout-s", type=float, default=5.0, show_default=True)
def check(url: str | None, config_file: str | None, timeout_s: float) -> None:
    """Exit 0 when a running logistik is ready (/readyz), 1 when it is not: for orchestrators.

    \b
    Example:
      logistik check --url http://127.0.0.1:5656 && echo ready
    """
    from logistik.commands.check import readiness

    if url is None:
        web = optional_config(config_file).web
        url = f"http://{web.host}:{web.port}"
    ready, line = readiness(url, timeout_s)
    click.echo(line, err=not ready)
    sys.exit(0 if ready else EXIT_ERROR)


@main.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5656,
    show_default=True,
    help="Port of the web UI.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 1000),
    default=10.0,
    show_default=True,
    help="Events per second in the demo stream.",
)
def demo(port: int, rate: float) -> None:
    """Run logistik on embedded defaults with three real models; Ctrl-C stops everything.

    \b
    Starts a Kafka-protocol broker, a SQLite store in a temporary directory and three
    scikit-learn digit classifiers served over HTTP (model, canary, decoy), streams digits
    to the topic `digits`, and serves the web UI. Nothing to install or set up by hand.
    \b
    Example:
      logistik demo --port 5656
    """
    from logistik.commands.demo import run_demo

    setup_logging("info")
    try:
        with EmbeddedBroker() as broker:
            asyncio.run(_until_signal(lambda stop: run_demo(stop, port, rate, broker)))
    except LogistikError as exc:
        fail(str(exc), EXIT_ERROR)


async def _until_signal(work: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run work until SIGINT or SIGTERM sets its stop event."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await work(stop)


@main.command("hash-password")
@click.password_option(help="The password (asked for when not given).")
def hash_password_command(password: str) -> None:
    """Print a password hash for `web.auth.users` in the config.

    \b
    Example:
      logistik hash-password   # then: web: {auth: {users: {alice: "<printed hash>"}}}
    """
    from logistik.web.auth import hash_password

    click.echo(hash_password(password))


main.add_command(handlers)
main.add_command(register)
main.add_command(replay)
main.add_command(tail)

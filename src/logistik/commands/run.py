"""`logistik run`: the router, on the configured broker or an embedded one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

import click

from logistik.commands.console import (
    EXIT_ERROR,
    fail,
    required_config,
    store_name,
    until_signal,
)
from logistik.config import EMBEDDED, Config
from logistik.errors import LogistikError
from logistik.kafka import EmbeddedBroker
from logistik.observe.logs import setup_logging

logger = logging.getLogger("logistik.run")

STOPPED_STARTING = "logistik: stopped during start-up"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (faster sockets), else asyncio's own."""
    if os.environ.get("LK_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@click.command()
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
    broker: EmbeddedBroker | None = None
    try:
        config = required_config(config_file)
        setup_logging(log_level or config.log_level, config.log_format == "json")
        logger.info("handler store: %s", store_name(config.database.url))
        if config.kafka.bootstrap_servers == EMBEDDED:
            broker = EmbeddedBroker(config.kafka.embedded_port).start()
            kafka = config.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
            config = config.model_copy(update={"kafka": kafka})
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(until_signal(lambda stop: route(config, stop)))
    except KeyboardInterrupt:  # before the event loop takes Ctrl-C over
        click.echo(STOPPED_STARTING, err=True)
    except LogistikError as exc:
        fail(str(exc), EXIT_ERROR)
    finally:
        if broker is not None:
            broker.stop()


async def route(config: Config, stop: asyncio.Event) -> None:
    """Route until `stop` is set; a stop during start-up ends the start-up at once."""
    # The router's imports are not needed by other commands.
    from logistik.process import Runner, tune_gc

    started = asyncio.Event()

    def after_start() -> None:
        started.set()
        tune_gc()

    routing = asyncio.create_task(Runner(config, after_start=after_start).run(stop))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({routing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if routing.done() or started.is_set():
        await routing  # routing stops, drains and commits by itself
        return
    # Nothing was consumed yet, so there is nothing to drain: what started is closed again.
    routing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await routing
    click.echo(STOPPED_STARTING, err=True)

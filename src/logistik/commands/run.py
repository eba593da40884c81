"""`logistik run`: the router, on the configured broker or an embedded one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

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
from logistik.kafka import EmbeddedBroker, embedded_session
from logistik.observe.logs import setup_logging
from logistik.process.workers import WorkerRole, run_pool

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
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Routers to run on this host in one consumer group (default: the config's workers, 1).",
)
@click.option("--worker", "worker_of", hidden=True, metavar="K/N")
@click.option("--worker-dir", hidden=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--bootstrap", hidden=True, metavar="SERVERS")
def run(
    config_file: str | None,
    log_level: str | None,
    workers: int | None,
    worker_of: str | None,
    worker_dir: Path | None,
    bootstrap: str | None,
) -> None:
    """Run the router: consume every topic that has a handler, route, publish, commit.

    \b
    Example:
      logistik run --config logistik.yaml
      logistik run --config logistik.yaml --workers 2
    """
    broker: EmbeddedBroker | None = None
    try:
        config = required_config(config_file)
        role = _role(worker_of, worker_dir)
        setup_logging(
            log_level or config.log_level,
            config.log_format == "json",
            None if role is None else role.index,
            config.event_log_level,
        )
        count = workers or config.workers
        if role is None:
            logger.info("handler store: %s", store_name(config.database.url))
        if config.kafka.bootstrap_servers == EMBEDDED:  # in each worker's config too
            config = config.model_copy(update={"kafka": embedded_session(config.kafka)})
        if bootstrap is not None:
            config = _with_kafka(config, bootstrap_servers=bootstrap)
        elif config.kafka.bootstrap_servers == EMBEDDED:
            broker = EmbeddedBroker(config.kafka.embedded_port).start()
            config = _with_kafka(config, bootstrap_servers=broker.bootstrap_servers)
        if role is not None and config.kafka.group_instance_id:
            # Static members of one group need ids of their own.
            instance = f"{config.kafka.group_instance_id}-w{role.index}"
            config = _with_kafka(config, group_instance_id=instance)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            if role is None and count > 1:
                argv = _worker_argv(config_file, log_level, config.kafka.bootstrap_servers)
                grace_s = config.routing.shutdown_grace_s
                code = runner.run(_pool(argv, count, grace_s))
                if code:
                    raise SystemExit(code)
                return
            runner.run(until_signal(lambda stop: route(config, stop, role)))
    except KeyboardInterrupt:  # before the event loop takes Ctrl-C over
        click.echo(STOPPED_STARTING, err=True)
    except LogistikError as exc:
        fail(str(exc), EXIT_ERROR)
    finally:
        if broker is not None:
            broker.stop()


def _role(worker_of: str | None, directory: Path | None) -> WorkerRole | None:
    """The worker this process is, from the options its parent gave it."""
    if worker_of is None or directory is None:
        return None
    index, _, count = worker_of.partition("/")
    return WorkerRole(int(index), int(count), directory)


def _with_kafka(config: Config, **changes: str) -> Config:
    return config.model_copy(update={"kafka": config.kafka.model_copy(update=changes)})


def _worker_argv(config_file: str | None, log_level: str | None, bootstrap: str) -> list[str]:
    """What each worker is started with: the same config and log level, the broker found."""
    argv = ["--bootstrap", bootstrap]
    if config_file is not None:
        argv += ["--config", config_file]
    if log_level is not None:
        argv += ["--log-level", log_level]
    return argv


async def _pool(argv: list[str], count: int, grace_s: float) -> int:
    """Run the workers until SIGINT or SIGTERM; the exit code."""
    code = 0

    async def work(stop: asyncio.Event) -> None:
        nonlocal code
        code = await run_pool(argv, count, grace_s, stop)

    await until_signal(work)
    return code


async def route(config: Config, stop: asyncio.Event, role: WorkerRole | None = None) -> None:
    """Route until `stop` is set; a stop during start-up ends the start-up at once."""
    # The router's imports are not needed by other commands.
    from logistik.process import Runner, tune_gc

    started = asyncio.Event()

    def after_start() -> None:
        started.set()
        tune_gc()

    routing = asyncio.create_task(Runner(config, after_start, role).run(stop))
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

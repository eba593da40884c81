"""What every command shares: one-line errors with exit codes, the config, and Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import click

from logistik.config import (
    DEFAULT_PATH,
    EMBEDDED,
    ENV_PATH,
    Config,
    KafkaConfig,
    config_path,
    load_config,
    masked_url,
    sqlite_path,
)
from logistik.errors import ConfigError
from logistik.kafka import loopback_servers

EXIT_ERROR = 1
EXIT_CONFIG = 2


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print each line of `message` as `logistik: ...` on stderr and exit with `code`."""
    for line in message.splitlines() or [""]:
        click.echo(f"logistik: {line}", err=True)
    sys.exit(code)


def required_config(config_file: str | None) -> Config:
    """The config file (--config, else $LK_CONFIG, else logistik.yaml); exit 2 when it is wrong."""
    path = config_path(config_file)
    if not path.exists():
        fail(
            f"{path}: config file not found; `logistik init` writes a commented starter "
            "(`logistik init --help`), and examples/quickstart.yaml in logistik's source is "
            "one that runs as it is",
            EXIT_CONFIG,
        )
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


def config_given(config_file: str | None) -> bool:
    """Whether a config file is named (--config, $LK_CONFIG) or present (logistik.yaml)."""
    return bool(config_file or os.environ.get(ENV_PATH) or Path(DEFAULT_PATH).exists())


def optional_config(config_file: str | None) -> Config:
    """Like required_config when a config file is named or present, else the defaults."""
    return required_config(config_file) if config_given(config_file) else Config()


def kafka_settings(config_file: str | None, bootstrap_servers: str | None) -> KafkaConfig:
    """The config's Kafka section (if any) with --bootstrap-servers applied, for a client.

    `embedded` names the broker `logistik run` starts on this machine, at kafka.embedded_port.
    """
    kafka = optional_config(config_file).kafka
    servers = bootstrap_servers or kafka.bootstrap_servers
    if servers == EMBEDDED:
        servers = loopback_servers(kafka.embedded_port)
    return kafka.model_copy(update={"bootstrap_servers": servers})


async def until_signal(work: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run work with a stop event that SIGINT or SIGTERM sets."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await work(stop)


def store_name(url: str) -> str:
    """The store as people name it: a SQLite file's path, else the URL without its secrets."""
    path = sqlite_path(url)
    return str(path) if path is not None else masked_url(url)

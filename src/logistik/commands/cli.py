"""The `logistik` command: a group of subcommands, one module each."""

from __future__ import annotations

import click

from logistik.commands.check import check
from logistik.commands.demo import demo
from logistik.commands.handlers import handlers
from logistik.commands.hash_password import hash_password_command
from logistik.commands.init import init
from logistik.commands.register import register
from logistik.commands.replay import replay
from logistik.commands.run import run
from logistik.commands.send import send
from logistik.commands.tail import tail


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="logistik")
def main() -> None:
    """Route events from Kafka to models over HTTP and their answers back to Kafka."""


main.add_command(check)
main.add_command(demo)
main.add_command(handlers)
main.add_command(hash_password_command)
main.add_command(init)
main.add_command(register)
main.add_command(replay)
main.add_command(run)
main.add_command(send)
main.add_command(tail)

"""The `logistik` command: a group of subcommands, one module each, loaded when named."""

from __future__ import annotations

import importlib
import signal
import sys
from types import FrameType
from typing import Any

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _interrupted(_signum: int, _frame: FrameType | None) -> None:
    """Ctrl-C while a command loads: one line, no traceback."""
    sys.stderr.write("logistik: interrupted\n")
    raise SystemExit(EXIT_INTERRUPTED)


# This module is the program's entry: from here until a command takes Ctrl-C over (even while
# click loads), Ctrl-C is one line. Not when Ctrl-C is ignored (a background job).
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted)

import click  # noqa: E402

# Command name -> module and attribute. A command's module (and what it imports: Kafka, the
# web server, the router) is loaded only when that command runs, so `logistik` answers at once.
COMMANDS = {
    "check": ("logistik.commands.check", "check"),
    "demo": ("logistik.commands.demo", "demo"),
    "handlers": ("logistik.commands.handlers", "handlers"),
    "hash-password": ("logistik.commands.hash_password", "hash_password_command"),
    "init": ("logistik.commands.init", "init"),
    "register": ("logistik.commands.register", "register"),
    "replay": ("logistik.commands.replay", "replay"),
    "rollout": ("logistik.commands.rollout", "rollout"),
    "run": ("logistik.commands.run", "run"),
    "send": ("logistik.commands.send", "send"),
    "tail": ("logistik.commands.tail", "tail"),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when one is named (or help lists them)."""

    _sigint: Any = None  # the SIGINT handler the process started with, while a command loads

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command's name."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import one command; from then on the command's own handling of Ctrl-C applies."""
        found = COMMANDS.get(cmd_name)
        if found is None:
            return None
        command = getattr(importlib.import_module(found[0]), found[1])
        if self._sigint is not None:
            signal.signal(signal.SIGINT, self._sigint)
            self._sigint = None
        assert isinstance(command, click.Command)
        return command

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run the command line; Ctrl-C while a command loads is one line, no traceback."""
        if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _interrupted):
            self._sigint = signal.default_int_handler
            signal.signal(signal.SIGINT, _interrupted)
        try:
            return super().main(*args, **kwargs)
        finally:
            if self._sigint is not None:
                signal.signal(signal.SIGINT, self._sigint)
                self._sigint = None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="logistik")
def main() -> None:
    """Route events from Kafka to models over HTTP and their answers back to Kafka."""

"""`logistik handlers ...`: list, show and steer handlers in the store from the command line."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import yaml
from rich.console import Console
from rich.table import Table

from logistik.commands.console import EXIT_CONFIG, fail, required_config, store_name
from logistik.config import sqlite_path
from logistik.control.handler_service import HandlerService, with_service
from logistik.control.store import HandlerRecord
from logistik.errors import LogistikError
from logistik.observe.reachability import probe
from logistik.web import record_fields

T = TypeVar("T")
STATE_STYLES = {
    "active": "green",
    "down": "red",
    "gone": "dim",
    "disabled": "yellow",
    "retired": "dim",
    "invalid": "red",
}


def _call(
    ctx: click.Context, action: Callable[[HandlerService], Awaitable[T]], create: bool = False
) -> T:
    """Open the configured store, run one service action, close the store.

    Only `add` creates a SQLite store that does not exist yet: anything else on a missing file
    is most likely run with another config (or from another folder) than the router's.
    """
    url = _store_url(ctx)
    path = sqlite_path(url)
    if path is not None and not create and not path.exists():
        fail(
            f"no handler store at {path} (logistik run or `logistik handlers add` creates it); "
            "is --config the file logistik run uses?"
        )
    try:
        return asyncio.run(with_service(url, action))
    except LogistikError as exc:
        fail(str(exc))


def _store_url(ctx: click.Context) -> str:
    return required_config(ctx.obj["config"]).database.url


def _row(record: HandlerRecord) -> dict[str, Any]:
    """A handler as `show` and `list --json` print it: decoy counts flat, the time as stored."""
    return {
        **record_fields(record),
        "decoy_compared": record.decoy_compared,
        "decoy_agreed": record.decoy_agreed,
        "updated_at": record.updated_at.isoformat(),
    }


def _table(records: list[HandlerRecord]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in (
        "node id",
        "topic",
        "group",
        "type",
        "version",
        "address",
        "state",
        "traffic",
        "returns to",
        "agreement",
    ):
        table.add_column(column, no_wrap=column in ("node id", "address"))
    for record in records:
        handler = record.handler
        agreement = (
            f"{record.agreement:.1%} of {record.decoy_compared}"
            if record.agreement is not None
            else ""
        )
        state = record.state
        table.add_row(
            handler.node_id,
            handler.event,
            handler.group_id,
            handler.model_type.value,
            handler.version or "-",
            f"{handler.endpoint}:{handler.port}{handler.path}",
            f"[{STATE_STYLES.get(state, '')}]{state}[/]",
            f"{handler.traffic:g}" if handler.model_type.value == "canary" else "",
            handler.return_to or "-",
            agreement,
        )
    return table


def _print(records: list[HandlerRecord], as_json: bool, store: str) -> None:
    if as_json:
        click.echo(json.dumps([_row(r) for r in records], indent=2))
    elif records:
        # A pipe gets every column whole; a terminal gets its own width.
        console = Console(width=None if sys.stdout.isatty() else 240)
        console.print(_table(records))
        console.print(f"store: {store}", style="dim", highlight=False)
    else:
        click.echo(f"no handlers in {store}", err=True)


def _fields(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`key=value` arguments as handler fields; values are read as YAML scalars."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"'{pair}' is not key=value", EXIT_CONFIG)
        fields[key.strip()] = _scalar(value)
    return fields


def _scalar(value: str) -> Any:
    """A value read as a YAML scalar (5 is a number, true a boolean); anything else as text."""
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, str | int | float | bool) or parsed is None else value


@click.group()
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="YAML config naming the store (default: $LK_CONFIG, else logistik.yaml).",
)
@click.pass_context
def handlers(ctx: click.Context, config_file: str | None) -> None:
    """List, show and steer the handlers in the store (changes reach running routers live)."""
    ctx.obj = {"config": config_file}


@handlers.command("list")
@click.option("--topic", help="Only handlers of this topic.")
@click.option("--type", "model_type", type=click.Choice(["model", "canary", "decoy", "deploy"]))
@click.option("--host", help="Only handlers on this host name or endpoint.")
@click.option("--state", type=click.Choice(sorted(STATE_STYLES)))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def list_handlers(
    ctx: click.Context,
    topic: str | None,
    model_type: str | None,
    host: str | None,
    state: str | None,
    as_json: bool,
) -> None:
    """List handlers.

    \b
    Example:
      logistik handlers list --topic event-v2-detect --state active
    """
    records = _call(ctx, lambda s: s.find(topic, model_type, host, state))
    _print(records, as_json, store_name(_store_url(ctx)))


@handlers.command()
@click.argument("node_id")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.pass_context
def show(ctx: click.Context, node_id: str, as_json: bool) -> None:
    """Show every field of one handler.

    \b
    Example:
      logistik handlers show face-10.0.0.5-model-0 --json
    """
    row = _row(_call(ctx, lambda s: s.show(node_id)))
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        click.echo(f"{key:<{width}}  {'' if value is None else value}")


@handlers.command()
@click.argument("fields", nargs=-1, required=True)
@click.pass_context
def add(ctx: click.Context, fields: tuple[str, ...]) -> None:
    """Add a handler from key=value fields.

    \b
    Example:
      logistik handlers add name=face event=event-v2-detect endpoint=10.0.0.5 port=5151 \\
        path=/v1/detect return_to=face-results
    """
    record = _call(ctx, lambda s: s.add(_fields(fields)), create=True)
    click.echo(f"added {record.node_id}")
    reach = asyncio.run(probe(record.handler, timeout_s=2.0))
    if not reach.ok:
        click.echo(f"logistik: warning: {reach.detail} (is the model running?)", err=True)


@handlers.command()
@click.argument("node_id")
@click.argument("fields", nargs=-1, required=True)
@click.pass_context
def edit(ctx: click.Context, node_id: str, fields: tuple[str, ...]) -> None:
    """Change fields of a handler: NODE_ID key=value ...

    \b
    Example:
      logistik handlers edit face-10.0.0.5-model-0 timeout=5 retries=2
    """
    _call(ctx, lambda s: s.edit(node_id, _fields(fields)))
    click.echo(f"edited {node_id}")


def _simple(name: str, verb: str, help_text: str) -> None:
    """Register a command that takes one node id and runs one service action."""

    example = f"\n\n\b\nExample:\n  logistik handlers {name} face-10.0.0.5-model-0"

    @handlers.command(name, help=help_text + example)
    @click.argument("node_id")
    @click.pass_context
    def command(ctx: click.Context, node_id: str) -> None:
        _call(ctx, lambda s: getattr(s, name)(node_id))
        click.echo(f"{verb} {node_id}")


_simple("enable", "enabled", "Let a handler disabled by hand get events again.")
_simple("disable", "disabled", "Stop sending events to a handler until it is enabled.")
_simple("retire", "retired", "Take a handler out of rotation for good.")
_simple("demote", "demoted", "Make a production handler a standby canary (traffic 0).")


@handlers.command()
@click.argument("node_id")
@click.pass_context
def promote(ctx: click.Context, node_id: str) -> None:
    """Make a canary, deploy or decoy production; production of its group becomes standby.

    \b
    Example:
      logistik handlers promote face-10.0.0.6-canary-0
    """
    for record in _call(ctx, lambda s: s.promote(node_id)):
        click.echo(f"{record.node_id}: now {record.handler.model_type.value}")
    click.echo(
        "(a node id keeps the type it was registered with: a promotion changes the type only)",
        err=True,
    )


@handlers.command()
@click.argument("node_id")
@click.argument("share", type=click.FloatRange(0.0, 1.0))
@click.pass_context
def traffic(ctx: click.Context, node_id: str, share: float) -> None:
    """Set the share (0-1) of its group's events a canary answers.

    \b
    Example:
      logistik handlers traffic face-10.0.0.6-canary-0 0.1
    """
    _call(ctx, lambda s: s.set_traffic(node_id, share))
    click.echo(f"{node_id}: traffic {share:g}")


@handlers.command()
@click.argument("node_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def delete(ctx: click.Context, node_id: str, yes: bool) -> None:
    """Delete a handler from the store.

    \b
    Example:
      logistik handlers delete face-10.0.0.5-model-0 --yes
    """
    if not yes:
        click.confirm(f"delete {node_id}?", abort=True)
    _call(ctx, lambda s: s.delete(node_id))
    click.echo(f"deleted {node_id}")


def _remember_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["config"] = value


# `--config` is accepted after the subcommand as well, as every other command takes it.
for _command in handlers.commands.values():
    _command.params.append(
        click.Option(
            ["--config"],
            metavar="FILE",
            expose_value=False,
            callback=_remember_config,
            help="YAML config naming the store (default: $LK_CONFIG, else logistik.yaml).",
        )
    )

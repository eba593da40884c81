"""`logistik rollout ...`: progressive canaries, promoted or rolled back by measured results."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from logistik.commands.console import EXIT_CONFIG, fail, required_config
from logistik.config import describe_validation
from logistik.control.rollout_model import RolloutOptions
from logistik.control.rollout_service import RolloutService, with_rollouts
from logistik.errors import LogistikError

T = TypeVar("T")
OUTCOME_STYLES = {
    "advance": "green",
    "promote": "bold green",
    "hold": "yellow",
    "rollback": "bold red",
    "start": "cyan",
}


def _call(ctx: click.Context, action: Callable[[RolloutService], Awaitable[T]]) -> T:
    """Open the configured store, run one rollout action, close the store."""
    url = required_config(ctx.obj["config"]).database.url
    try:
        return asyncio.run(with_rollouts(url, action))
    except LogistikError as exc:
        fail(str(exc))


def _console() -> Console:
    # A pipe gets every column whole; a terminal gets its own width.
    return Console(width=None if sys.stdout.isatty() else 200)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _interval(values: list[float | None] | None, unit: str = "%") -> str:
    if not values or values[0] is None:
        return ""
    low, high = values
    if unit == "%":
        return f" [{low:.2%}, {high:.2%}]" if high is not None else ""
    return f" [{low:g}, {'∞' if high is None else f'{high:g}'}] ms"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def _figures_table(figures: dict[str, Any]) -> Table:
    """Canary against production: counts, error rate, latency, agreement, with intervals."""
    table = Table(box=None, header_style="bold")
    for column in ("", "calls", "errors", "error rate", "timeouts", "p50", "p99", "agreement"):
        table.add_column(column)
    for side in ("canary", "production"):
        f = figures.get(side) or {}
        agreement = ""
        if f.get("compared"):
            agreement = f"{_pct(f.get('agreement'))} of {f['compared']}" + _interval(
                f.get("agreement_interval")
            )
        table.add_row(
            side,
            str(f.get("calls", 0)),
            str(f.get("errors", 0)),
            _pct(f.get("error_rate")) + _interval(f.get("error_interval")),
            str(f.get("timeouts", 0)),
            _ms(f.get("p50_ms")) + _interval(f.get("p50_interval_ms"), "ms"),
            _ms(f.get("p99_ms")) + _interval(f.get("p99_interval_ms"), "ms"),
            agreement,
        )
    return table


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")


def _print_status(view: dict[str, Any]) -> None:
    console = _console()
    steps = " → ".join(
        f"[bold]{s:g}%[/]" if i == view["step"] else f"{s:g}%" for i, s in enumerate(view["steps"])
    )
    console.print(
        f"rollout {view['id']} of [bold]{view['node_id']}[/] "
        f"({view['group_id']} on {view['topic']}): [bold]{view['status']}[/]"
        + (f" — {view['reason']}" if view.get("reason") else "")
    )
    console.print(f"steps: {steps}")
    decisions = Table(box=None, header_style="bold")
    for column in ("at", "step", "decision", "rule", "reason"):
        decisions.add_column(column, no_wrap=column != "reason")
    for d in view.get("decisions", []):
        style = OUTCOME_STYLES.get(d["outcome"], "")
        decisions.add_row(
            _when(d["at"]),
            f"{d['share']:.0%}",
            f"[{style}]{d['outcome']}[/]" if style else d["outcome"],
            d["rule"],
            d["reason"],
        )
    console.print(decisions)
    current = view.get("current")
    if current:
        console.print(f"now: [bold]{current['outcome']}[/] — {current['reason']}")
        console.print(_figures_table(current["figures"]))


@click.group()
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="YAML config naming the store (default: $LK_CONFIG, else logistik.yaml).",
)
@click.pass_context
def rollout(ctx: click.Context, config_file: str | None) -> None:
    """Move a canary's traffic up in steps; promote it or roll it back by its measured results.

    A running `logistik run` on the same store takes each decision; these commands start,
    show and steer rollouts.
    """
    ctx.obj = {"config": config_file}


@rollout.command()
@click.argument("node_id")
@click.option(
    "--steps",
    help="Canary shares in percent, one per step; the last passed step promotes. "
    "Example: --steps 5,25,50,100 (the default).",
)
@click.option(
    "--min-events",
    type=click.IntRange(min=1),
    help="Canary answers each step needs at least before it is decided. "
    "Example: --min-events 500 (the default).",
)
@click.option(
    "--step-wait",
    help="Least time each step lasts (90, 30s, 10m, 1h). Example: --step-wait 10m (the default).",
)
@click.option(
    "--max-error-rate-increase",
    type=click.FloatRange(0.0, 1.0),
    help="How far the canary's error rate may be above production's, as a fraction. "
    "Example: --max-error-rate-increase 0.01 (one point, the default).",
)
@click.option(
    "--max-p99-increase",
    type=click.FloatRange(min=1.0),
    help="How many times production's p99 latency the canary's may be. "
    "Example: --max-p99-increase 1.2 (the default).",
)
@click.option(
    "--max-p50-increase",
    type=click.FloatRange(min=1.0),
    help="How many times production's median latency the canary's may be. "
    "Example: --max-p50-increase 1.5 (default 1.2).",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0.0, 1.0),
    help="Least share of the canary's answers equal to production's, where compared. "
    "Example: --min-agreement 0.95 (the default).",
)
@click.option(
    "--shadow-share",
    type=click.FloatRange(0.0, 1.0),
    help="Share of the canary's events also sent to production to compare answers (not "
    "published). Example: --shadow-share 0.1 (default 0: no comparison but a decoy stage).",
)
@click.option(
    "--on-slow",
    type=click.Choice(["rollback", "hold"]),
    help="What a latency above its limit does. Example: --on-slow hold (default rollback).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.pass_context
def start(ctx: click.Context, /, node_id: str, as_json: bool, **given: Any) -> None:
    """Start rolling out a canary, or a decoy (which shadows production first).

    \b
    Example:
      logistik rollout start face-10.0.0.6-canary-0 --steps 5,25,100 --step-wait 5m
    """
    fields = {key: value for key, value in given.items() if value is not None}
    try:
        options = RolloutOptions.model_validate(fields)
    except ValidationError as exc:
        fail(describe_validation(exc, "rollout"), EXIT_CONFIG)

    async def begin(service: RolloutService) -> dict[str, Any]:
        return await service.view(await service.start(node_id, options))

    view = _call(ctx, begin)
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    first = "a shadow stage" if view["from_decoy"] else f"{view['steps'][0]:g}% of the events"
    click.echo(f"rollout {view['id']} of {node_id} started: {first}")


@rollout.command()
@click.argument("ref", metavar="[ROLLOUT]", required=False)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.pass_context
def status(ctx: click.Context, ref: str | None, as_json: bool) -> None:
    """Show a rollout's steps, every decision with its reason, and its figures now.

    ROLLOUT is a rollout id or a candidate's node id; without it, the only active rollout.

    \b
    Example:
      logistik rollout status 3
    """

    async def show(service: RolloutService) -> dict[str, Any]:
        return await service.view(await service.resolve(ref))

    view = _call(ctx, show)
    if as_json:
        click.echo(json.dumps(view, indent=2))
    else:
        _print_status(view)


@rollout.command("list")
@click.option("--active", is_flag=True, help="Only rollouts still running or paused.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def list_rollouts(ctx: click.Context, active: bool, as_json: bool) -> None:
    """List rollouts, newest first.

    \b
    Example:
      logistik rollout list --active
    """

    async def listed(service: RolloutService) -> list[dict[str, Any]]:
        return [await service.view(r, details=False) for r in await service.find(active=active)]

    views = _call(ctx, listed)
    if as_json:
        click.echo(json.dumps(views, indent=2))
        return
    if not views:
        click.echo("no rollouts", err=True)
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "candidate", "group", "topic", "status", "share", "started", "reason"):
        table.add_column(column, no_wrap=column != "reason")
    for view in views:
        table.add_row(
            str(view["id"]),
            view["node_id"],
            view["group_id"],
            view["topic"],
            view["status"],
            f"{view['share']:.0%} (step {view['step'] + 1} of {len(view['steps'])})",
            _when(view["created_at"]),
            view["reason"] or "",
        )
    _console().print(table)


def _steer(verb: str, done: str, help_text: str) -> None:
    """Register pause, resume or abort: one optional rollout, one service action."""

    @rollout.command(
        verb,
        help=f"{help_text}\n\nROLLOUT is a rollout id or a candidate's node id; without it, "
        f"the only active rollout.\n\n\b\nExample:\n  logistik rollout {verb} 3",
    )
    @click.argument("ref", metavar="[ROLLOUT]", required=False)
    @click.pass_context
    def command(ctx: click.Context, ref: str | None) -> None:
        changed = _call(ctx, lambda s: getattr(s, verb)(ref))
        click.echo(f"rollout {changed.id} of {changed.node_id} {done}")


_steer("pause", "paused", "Stop deciding; the canary keeps its share until resumed.")
_steer("resume", "resumed", "Decide again, in the step where the rollout was paused.")
_steer("abort", "aborted", "End a rollout; the canary's traffic goes back to 0.")

"""`logistik replay`: send a failed topic's events back to the groups that failed them."""

from __future__ import annotations

import sys
from datetime import datetime
from types import TracebackType

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from logistik.commands.console import fail, kafka_settings
from logistik.config import KafkaConfig
from logistik.control.replay import (
    FILTERED,
    GIVEN_UP,
    INVALID,
    NO_SOURCE,
    SEND,
    Planned,
    Replayer,
    Selection,
    parse_moment,
)
from logistik.errors import LogistikError
from logistik.protocol import Reason


def _moment_option(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> datetime | None:
    try:
        return None if value is None else parse_moment(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class ReplayProgress:
    """A progress bar with the counts on stderr, only when the output is a terminal."""

    def __init__(self, topic: str) -> None:
        enabled = sys.stdout.isatty() and sys.stderr.isatty()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task(f"replaying {topic}", total=None, counts="")

    def __enter__(self) -> ReplayProgress:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def update(self, replayer: Replayer) -> None:
        """Show how far the replay got."""
        c = replayer.counts
        counts = (
            f"sent {c[SEND]} · skipped by filter {c[FILTERED]} · skipped invalid "
            f"{c[INVALID] + c[NO_SOURCE]} · given up {c[GIVEN_UP]}"
        )
        total = max(replayer.total, replayer.read) or None
        self._progress.update(self._task, completed=replayer.read, total=total, counts=counts)


def summary(replayer: Replayer, dry_run: bool) -> list[str]:
    """The one-line summary, and a hint per kind of record left behind."""
    c, selection = replayer.counts, replayer.selection
    skipped = [
        (c[FILTERED], "skipped by filter"),
        (c[INVALID], "skipped as not an event"),
        (c[NO_SOURCE], "skipped without a source topic"),
        (c[GIVEN_UP], f"given up after {selection.max_replays} replays"),
    ]
    line = (
        f"{'would replay' if dry_run else 'replayed'} {c[SEND]} of {replayer.read} "
        f"record(s) from {replayer.topic}"
    )
    details = [f"{count} {what}" for count, what in skipped if count]
    lines = [f"{line}: {', '.join(details)}" if details else line]
    if c[INVALID]:
        lines.append(
            "hint: records that are not an event would fail again; "
            "--include-invalid sends them anyway"
        )
    if c[GIVEN_UP]:
        lines.append(
            f"hint: {c[GIVEN_UP]} record(s) failed again after "
            f"{selection.max_replays} replay(s); fix what fails them, then "
            f"--max-replays {selection.max_replays + 1} sends them once more"
        )
    return lines


def table_row(planned: Planned) -> tuple[str, ...]:
    """One record a dry run would send, as a row of the table."""
    record = planned.record
    return (
        f"{planned.partition}/{planned.offset}",
        record.event_id or "-",
        record.group_id or "(all)",
        record.reason,
        planned.failed_at.isoformat(timespec="milliseconds"),
        str(record.replays),
        record.topic,
    )


def print_table(planned: list[Planned]) -> None:
    """What a dry run would send, as a table on stdout."""
    title = "would be replayed" if planned else "nothing would be replayed"
    table = Table(
        "partition/offset",
        "event id",
        "group",
        "reason",
        "failed at",
        "replays",
        "target topic",
        title=title,
    )
    for one in planned:
        table.add_row(*table_row(one))
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def run_replay(
    kafka: KafkaConfig,
    topic: str,
    group_id: str,
    selection: Selection,
    dry_run: bool,
    timeout_s: float,
    idle_s: float,
) -> None:
    """Replay, print what happened and exit 1 when it could not finish."""
    try:
        replayer = Replayer(kafka, topic, group_id, selection, dry_run)
    except LogistikError as exc:
        fail(str(exc))
    try:
        with ReplayProgress(topic) as progress:
            done = replayer.run(timeout_s, idle_s, progress.update)
    except LogistikError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted while waiting for acknowledgements: nothing more is committed")
    finally:
        replayer.close()
    if dry_run:
        print_table(replayer.planned)
    for line in summary(replayer, dry_run):
        click.echo(line, err=True)
    if replayer.interrupted:
        fail("interrupted; what was replayed is committed: run again for the rest")
    if not replayer.assigned:
        fail(
            f"no partition of {topic} was assigned to group {group_id} within {timeout_s:g} s "
            "(is another replay with the same --group-id running?)"
        )
    if not done:
        fail(
            f"stopped after {timeout_s:g} s before the end of {topic}; what was replayed is "
            "committed: run again for the rest"
        )


@click.command()
@click.argument("topic", metavar="TOPIC-failed")
@click.option(
    "--handler",
    "handlers",
    multiple=True,
    metavar="NODE_ID",
    help="Only records this handler failed (in logistik.failed_nodes). Repeatable.",
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    metavar="GROUP",
    help="Only records of this group. Repeatable.",
)
@click.option(
    "--reason",
    "reasons",
    multiple=True,
    type=click.Choice([reason.value for reason in Reason]),
    metavar="REASON",
    help="Only records that failed for this reason (retries-exhausted, rejected, no-handler, "
    "...). Repeatable.",
)
@click.option(
    "--since",
    metavar="TIME",
    callback=_moment_option,
    help="Only records that failed at or after TIME (ISO, or 30m, 2h, 1d ago).",
)
@click.option(
    "--until",
    metavar="TIME",
    callback=_moment_option,
    help="Only records that failed at or before TIME (ISO, or 30m, 2h, 1d ago).",
)
@click.option(
    "--max-replays",
    type=click.IntRange(min=0),
    metavar="N",
    default=3,
    show_default=True,
    help="Records already replayed this often are not sent again (reported).",
)
@click.option(
    "--include-invalid",
    is_flag=True,
    help="Send records whose bytes are not an event too (they would fail again).",
)
@click.option(
    "--all-handlers",
    is_flag=True,
    help="Send to every group of the topic, not only to the group that failed.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be sent; send and commit nothing.")
@click.option(
    "--group-id",
    default="logistik-replay",
    show_default=True,
    help="Consumer group that remembers what was replayed.",
)
@click.option(
    "--idle-s",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    default=2.0,
    show_default=True,
    help="At the end of the topic, wait this long for more records before stopping.",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=600.0,
    show_default=True,
    help="Give up (exit 1, what was sent is committed) after this long.",
)
@click.option("--config", "config_file", metavar="FILE", help="YAML config for the broker.")
@click.option("--bootstrap-servers", help="Overrides kafka.bootstrap_servers.")
def replay(
    topic: str,
    handlers: tuple[str, ...],
    groups: tuple[str, ...],
    reasons: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    max_replays: int,
    include_invalid: bool,
    all_handlers: bool,
    dry_run: bool,
    group_id: str,
    idle_s: float,
    timeout_s: float,
    config_file: str | None,
    bootstrap_servers: str | None,
) -> None:
    """Send the events of a failed topic back to their topics, for the groups that failed them.

    Each failed record goes back to its source topic (header logistik.topic), keyed by the
    event's actor.id, with logistik.replay_groups naming the group that failed it (running
    routers route it to that group only) and logistik.replays counting the replays; if it
    fails again, the new failed record carries that count. Records whose bytes are not an
    event are skipped, and so are records replayed --max-replays times already.

    The failed topic is read with a consumer group from its committed position (the
    beginning the first time) up to the records that existed when the run started. What was
    read is committed only once every replayed record is acknowledged: a second run sends
    nothing again, and a run stopped before its commit sends those records again at worst.

    Exit code: 0 when done (some records may have been skipped), 1 on an error.

    \b
    Examples:
      logistik replay events-failed --dry-run
      logistik replay events-failed --reason retries-exhausted --since 2h
      logistik replay events-failed --handler face-10.0.0.5-model-0 --max-replays 5
    """
    kafka = kafka_settings(config_file, bootstrap_servers)
    selection = Selection(
        frozenset(handlers),
        frozenset(groups),
        frozenset(reasons),
        since,
        until,
        max_replays,
        include_invalid,
        all_handlers,
    )
    run_replay(kafka, topic, group_id, selection, dry_run, timeout_s, idle_s)


if __name__ == "__main__":
    replay()

"""Every event of a fault test accounted for: answered, failed, lost or duplicated, per group."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from tests.support.kafkatools import Record

EVENT_ID = "logistik.event_id"


def group_of(answer: Record) -> str:
    """The group that published an answer, from its node id (`service_id-host-type-node`)."""
    return answer.headers["logistik.node_id"].split("-")[0]


@dataclass(frozen=True)
class Tally:
    """What became of each (event, group) pair of a fault test."""

    fault: str
    events: int  # (event, group) pairs sent
    answered: int  # pairs with an answer on the group's return topic
    failed: int  # pairs without an answer but with a failed record naming the group
    lost: int  # pairs with neither
    duplicated: int  # outcomes beyond the first: answers again, or answered and failed

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.fault,
            self.events + other.events,
            self.answered + other.answered,
            self.failed + other.failed,
            self.lost + other.lost,
            self.duplicated + other.duplicated,
        )

    def row(self) -> str:
        """The tally as a row of the README's fault table."""
        figures = (self.events, self.answered, self.failed, self.lost, self.duplicated)
        return f"| {self.fault} | " + " | ".join(f"{n:,}" for n in figures) + " |"


def tally(
    fault: str,
    sent: Iterable[str],
    groups: Iterable[str],
    answers: Iterable[Record],
    failed: Iterable[Record],
) -> Tally:
    """Count the outcomes of every sent event id in every group, from what the topics hold."""
    sent_ids, names = set(sent), set(groups)
    answered = Counter((r.headers[EVENT_ID], group_of(r)) for r in answers)
    refused = Counter(
        (r.headers.get(EVENT_ID, ""), r.headers.get("logistik.group", "")) for r in failed
    )
    pairs = [(ident, group) for ident in sent_ids for group in names]
    done = sum(1 for pair in pairs if answered[pair])
    only_failed = sum(1 for pair in pairs if not answered[pair] and refused[pair])
    duplicated = sum(max(0, answered[pair] + refused[pair] - 1) for pair in pairs)
    return Tally(fault, len(pairs), done, only_failed, len(pairs) - done - only_failed, duplicated)

"""Agreement of decoy (shadow) answers with production's answer to the same event."""

from __future__ import annotations

import orjson

from logistik.answer import Answer, Outcome


def agrees(production: Answer, decoy: Answer) -> bool:
    """Whether a decoy answered as production did: same outcome and, for answers, equal JSON."""
    if production.outcome is not decoy.outcome:
        return False
    if production.outcome is not Outcome.OK:
        return True
    if production.body == decoy.body:
        return True
    return bool(orjson.loads(production.body) == orjson.loads(decoy.body))


class DecoyTally:
    """Counts compared and agreeing answers per decoy until they are written to the store."""

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}

    def record(self, node_id: str, agreed: bool) -> None:
        """Count one comparison."""
        counts = self._counts.setdefault(node_id, [0, 0])
        counts[0] += 1
        counts[1] += int(agreed)

    def drain(self) -> dict[str, tuple[int, int]]:
        """The counts since the last drain, as (compared, agreed) per decoy node id."""
        counts, self._counts = self._counts, {}
        return {node: (c[0], c[1]) for node, c in counts.items()}

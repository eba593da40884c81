"""Messages made fit for one line of an answer or a log."""

from __future__ import annotations


def one_line(text: str, limit: int | None = None) -> str:
    """Text as one line: its non-blank lines stripped and joined by `; `, cut at `limit` chars."""
    line = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if limit is None else line[:limit]

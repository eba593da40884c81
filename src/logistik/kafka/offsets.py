"""Which offsets may be committed: only up to the last event of a partition whose work is done."""

from __future__ import annotations

import threading
from collections import deque

TopicPartitionKey = tuple[str, int]


class PartitionTracker:
    """Offsets of one partition in arrival order; the commit point moves past finished ones only."""

    __slots__ = ("_book", "closed", "committed", "done", "key", "next_offset", "pending")

    def __init__(self, key: TopicPartitionKey, book: OffsetBook) -> None:
        self.key = key
        self._book = book
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.next_offset: int | None = None  # the offset to commit: every earlier one is done
        self.committed: int | None = None
        self.closed = False

    def add(self, offset: int) -> None:
        """Record an offset handed out for processing."""
        with self._book.lock:
            self.pending.append(offset)

    def finish(self, offset: int) -> None:
        """Mark an offset done and advance the commit point past every finished head."""
        with self._book.lock:
            if self.closed:
                return
            pending = self.pending
            if pending and pending[0] == offset:
                pending.popleft()
                self.next_offset = offset + 1
                done = self.done
                while pending and pending[0] in done:
                    head = pending.popleft()
                    done.discard(head)
                    self.next_offset = head + 1
            else:
                self.done.add(offset)

    @property
    def in_progress(self) -> int:
        """How many offsets are handed out and not yet done."""
        return len(self.pending)


class OffsetBook:
    """Every tracked partition; shared by the event loop and the Kafka consumer thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._trackers: dict[TopicPartitionKey, PartitionTracker] = {}

    def tracker(self, topic: str, partition: int) -> PartitionTracker:
        """The tracker of a partition, made on first use."""
        key = (topic, partition)
        tracker = self._trackers.get(key)
        if tracker is None:
            with self.lock:
                tracker = self._trackers.setdefault(key, PartitionTracker(key, self))
        return tracker

    def to_commit(self) -> dict[TopicPartitionKey, int]:
        """Commit points that moved since the last call, marked as committed."""
        result: dict[TopicPartitionKey, int] = {}
        with self.lock:
            for key, tracker in self._trackers.items():
                if tracker.next_offset is not None and tracker.next_offset != tracker.committed:
                    result[key] = tracker.next_offset
                    tracker.committed = tracker.next_offset
        return result

    def uncommit(self, keys: list[TopicPartitionKey]) -> None:
        """Forget that these commit points were committed, so the next commit sends them again."""
        with self.lock:
            for key in keys:
                tracker = self._trackers.get(key)
                if tracker is not None:
                    tracker.committed = None

    def forget(self, keys: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Stop tracking revoked partitions; returns their last commit points not yet committed."""
        result: dict[TopicPartitionKey, int] = {}
        with self.lock:
            for key in keys:
                tracker = self._trackers.pop(key, None)
                if tracker is None:
                    continue
                tracker.closed = True
                if tracker.next_offset is not None and tracker.next_offset != tracker.committed:
                    result[key] = tracker.next_offset
        return result

    def in_progress(self, keys: list[TopicPartitionKey] | None = None) -> int:
        """Offsets handed out and not yet done, over the given partitions (default: all)."""
        with self.lock:
            if keys is None:
                return sum(t.in_progress for t in self._trackers.values())
            return sum(self._trackers[k].in_progress for k in keys if k in self._trackers)

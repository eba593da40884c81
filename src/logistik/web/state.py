"""What the API reads from the running router."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from logistik.config import Config
from logistik.control.handler_service import HandlerService
from logistik.observe.figures import Figures
from logistik.observe.reachability import Reachability
from logistik.routing.registry import Registry


@dataclass
class AppState:
    """What the API reads from the running router."""

    config: Config
    service: HandlerService
    figures: Figures
    registry: Registry
    status: Callable[[], dict[str, Any]]  # the router's live status: consuming, in flight, ...
    reachability: Reachability | None = None  # what probing each model found
    # Calls in flight to a model instance, in every worker of `run --workers N` (given the
    # instance's own in this process); None: this process's own.
    in_flight_of: Callable[[str, int], int] | None = None

    def in_flight(self, node_id: str, own: int) -> int:
        """Calls in flight to one model instance on this host."""
        return own if self.in_flight_of is None else self.in_flight_of(node_id, own)

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

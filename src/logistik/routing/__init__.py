"""The data path: consume, route each event to its groups' models, publish, commit.

Modules inside the package import each other by module path; these names are for others.
"""

from logistik.routing.backoff import Backoff, parse_retry_after
from logistik.routing.backpressure import Backpressure
from logistik.routing.batching import Batcher
from logistik.routing.cache import ResponseCache
from logistik.routing.consume_loop import ConsumeLoop
from logistik.routing.decoy import DecoyTally, agrees
from logistik.routing.model_client import ModelClient, classify, classify_batch, describe_error
from logistik.routing.registry import Group, LiveHandler, Registry
from logistik.routing.router import Router, Source
from logistik.routing.slots import Slots

__all__ = [
    "Backoff",
    "Backpressure",
    "Batcher",
    "ConsumeLoop",
    "DecoyTally",
    "Group",
    "LiveHandler",
    "ModelClient",
    "Registry",
    "ResponseCache",
    "Router",
    "Slots",
    "Source",
    "agrees",
    "classify",
    "classify_batch",
    "describe_error",
    "parse_retry_after",
]

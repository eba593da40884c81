"""The control plane: the handler store, operator actions on handlers, and Consul discovery.

Modules inside the package import each other by module path; these names are for others.
"""

from logistik.control.consul import ConsulClient, ConsulError
from logistik.control.discovery import ConsulDiscovery
from logistik.control.follower import StoreFollower
from logistik.control.handler_service import HandlerService, with_service
from logistik.control.store import HandlerRecord, Store

__all__ = [
    "ConsulClient",
    "ConsulDiscovery",
    "ConsulError",
    "HandlerRecord",
    "HandlerService",
    "Store",
    "StoreFollower",
    "with_service",
]

"""What logistik tells about itself: figures, metrics, tracing, alerts, logs and health.

Modules inside the package import each other by module path; these names are for others.
"""

from logistik.observe.alerts import Alerter
from logistik.observe.figures import Figures
from logistik.observe.health import Readiness
from logistik.observe.logs import EVENTS_LOGGER, setup_logging
from logistik.observe.metrics import metrics_registry
from logistik.observe.statsd import Statsd
from logistik.observe.tracing import Tracing

__all__ = [
    "EVENTS_LOGGER",
    "Alerter",
    "Figures",
    "Readiness",
    "Statsd",
    "Tracing",
    "metrics_registry",
    "setup_logging",
]

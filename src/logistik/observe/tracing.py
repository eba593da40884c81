"""Optional OpenTelemetry tracing: a span per event, a child span per model call.

The trace context goes to the model in the `traceparent` HTTP header and into the Kafka
headers of the published answer, so one event can be followed through every model. Without
the `tracing` extra installed, or with tracing off, every call here costs a boolean check.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from logistik.config import TracingConfig

logger = logging.getLogger(__name__)

try:  # the `tracing` extra
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagate import extract, inject

    HAVE_OTEL = True
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_OTEL = False


class Tracing:
    """Spans for events and model calls, or nothing at all when tracing is off."""

    def __init__(self, config: TracingConfig | None) -> None:
        self.enabled = bool(config and config.enabled and HAVE_OTEL)
        if config and config.enabled and not HAVE_OTEL:
            logger.warning(
                "tracing is on but OpenTelemetry is not installed: pip install 'logistik[tracing]'"
            )
        if self.enabled:
            assert config is not None
            if config.exporter == "console":
                _install_console_exporter(config.service_name)
            self._tracer = trace.get_tracer("logistik")

    @contextlib.contextmanager
    def event(
        self, topic: str, partition: int, offset: int, headers: Sequence[tuple[str, Any]] | None
    ) -> Iterator[None]:
        """A span for one record, continuing a trace its producer started."""
        if not self.enabled:
            yield
            return
        carrier = _carrier(headers)
        parent = extract(carrier) if carrier else None
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.kafka.partition": partition,
            "messaging.kafka.offset": offset,
        }
        with self._tracer.start_as_current_span(
            f"route {topic}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ):
            yield

    @contextlib.contextmanager
    def resume(self, headers: Sequence[tuple[str, Any]] | None) -> Iterator[None]:
        """Continue, without a span of its own, the trace a retry record carries."""
        carrier = _carrier(headers) if self.enabled else {}
        if not carrier:
            yield
            return
        token = otel_context.attach(extract(carrier))
        try:
            yield
        finally:
            otel_context.detach(token)

    def annotate(self, **attributes: Any) -> None:
        """Add attributes to the current span."""
        if self.enabled:
            trace.get_current_span().set_attributes(attributes)

    @contextlib.contextmanager
    def call(self, node_id: str, url: str) -> Iterator[dict[str, str]]:
        """A span for one model call; yields the HTTP headers that carry its context."""
        if not self.enabled:
            yield {}
            return
        with self._tracer.start_as_current_span(
            f"call {node_id}",
            kind=trace.SpanKind.CLIENT,
            attributes={"logistik.node_id": node_id, "url.full": url},
        ):
            headers: dict[str, str] = {}
            inject(headers)
            yield headers

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """The current trace context as Kafka headers."""
        if not self.enabled:
            return []
        carrier: dict[str, str] = {}
        inject(carrier, context=otel_context.get_current())
        return [(k, v.encode()) for k, v in carrier.items()]


def _carrier(headers: Sequence[tuple[str, Any]] | None) -> dict[str, str]:
    """The trace context headers among Kafka headers."""
    return {
        # Producer input: undecodable bytes must not stop the event, only its trace link.
        k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
        for k, v in (headers or [])
        if k in ("traceparent", "tracestate") and v is not None
    }


def _install_console_exporter(service_name: str) -> None:
    """Print finished spans to stdout (for trying tracing without a collector)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)

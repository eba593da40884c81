"""OpenTelemetry: a span per event with a child per model call; traceparent reaches the model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.harness import RouterThread, handler, make_config
from tests.support.kafkatools import TopicReader, create_topics, event, produce, unique
from tests.support.models import ModelServer, Reply, echo, wait_until

pytestmark = pytest.mark.one_broker  # the subject is tracing, not the broker

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Finished spans, collected in memory (the process' tracer provider is set once)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def test_event_and_call_spans_with_trace_context_to_model_and_kafka(
    servers: str,
    spans: InMemorySpanExporter,
    model_server: Callable[..., ModelServer],
    router: Callable[[dict[str, Any]], RouterThread],
) -> None:
    topic = unique("traced")
    create_topics(servers, topic, f"{topic}-results", f"{topic}-failed")
    seen: list[str] = []

    def traced(ev: dict[str, Any], count: int) -> Reply:
        seen.append(ev["id"])
        return Reply(503) if len(seen) == 1 else echo(ev, count)

    model = model_server(traced)
    router(make_config(servers, [handler("face", topic, model.port)], tracing={"enabled": True}))
    with TopicReader(servers, f"{topic}-results") as reader:
        produce(servers, topic, [event()])
        [record] = reader.wait_for(f"{topic}-results", 1)
    # The event's span ends once the broker acknowledged the answer, which may be read first.
    wait_until(
        lambda: any(s.name == f"route {topic}" for s in spans.get_finished_spans()),
        what="the event's span to end",
    )
    finished = spans.get_finished_spans()
    [root] = [s for s in finished if s.name == f"route {topic}"]
    calls = [s for s in finished if s.name == "call face-127.0.0.1-model-0"]
    assert len(calls) == 2  # the failed call and its retry
    assert all(c.parent is not None and c.parent.span_id == root.context.span_id for c in calls)
    assert all(c.context.trace_id == root.context.trace_id for c in calls)
    assert [(c.attributes or {}).get("logistik.outcome") for c in calls] == ["error", "ok"]
    trace_id = f"{root.context.trace_id:032x}"
    assert all(h.split("-")[1] == trace_id for h in model.traceparents)
    assert len(model.traceparents) == 2
    assert record.headers["traceparent"].split("-")[1] == trace_id

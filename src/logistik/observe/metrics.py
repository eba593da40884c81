"""Prometheus metrics: read at scrape time from the router's figures, registry and consumer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from logistik.observe.figures import KINDS, LATENCY_BUCKETS_S, Figures
from logistik.routing.registry import Registry

HANDLER_LABELS = ["node_id", "name", "model_type", "topic"]
Lag = Callable[[], dict[tuple[str, int], int]]
# Partitions whose broker holds records no fetch brings: topic, partition, waiting, for_s.
NotFetched = Callable[[], list[dict[str, Any]]]


class RouterCollector(Collector):
    """Per handler and per topic figures of one running router, as Prometheus metrics."""

    def __init__(
        self, figures: Figures, registry: Registry, lag: Lag, not_fetched: NotFetched | None = None
    ) -> None:
        self._figures = figures
        self._registry = registry
        self._lag = lag
        self._not_fetched = not_fetched

    def _labels(self, node_id: str) -> list[str]:
        instance = self._registry.instance(node_id)
        if instance is None:
            return [node_id, "", "", ""]
        handler = instance.handler
        return [node_id, handler.name, handler.model_type.value, handler.event]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        """Every metric, built from the live figures."""
        yield from self._handler_metrics()
        yield from self._topic_metrics()

    def _handler_metrics(
        self,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "logistik_handler_requests", "Calls to the model.", labels=HANDLER_LABELS
        )
        answers = CounterMetricFamily(
            "logistik_handler_answers", "Answers by outcome.", labels=[*HANDLER_LABELS, "outcome"]
        )
        retries = CounterMetricFamily(
            "logistik_handler_retries", "Calls that were retries.", labels=HANDLER_LABELS
        )
        latency = HistogramMetricFamily(
            "logistik_handler_latency_seconds",
            "Time from request to answer.",
            labels=HANDLER_LABELS,
        )
        for node_id, figures in list(self._figures.handlers.items()):
            labels = self._labels(node_id)
            requests.add_metric(labels, figures.requests)
            retries.add_metric(labels, figures.retries)
            for kind in KINDS:
                answers.add_metric([*labels, kind], figures.answers.get(kind, 0))
            cumulative = list(accumulate(figures.bucket_counts))
            buckets = [(f"{b:g}", c) for b, c in zip(LATENCY_BUCKETS_S, cumulative, strict=True)]
            latency.add_metric(
                labels, [*buckets, ("+Inf", figures.requests)], figures.latency_sum_s
            )
        in_flight = GaugeMetricFamily(
            "logistik_handler_in_flight", "Calls waiting or running.", labels=HANDLER_LABELS
        )
        for handler in self._registry.handlers():
            instance = self._registry.instance(handler.node_id)
            in_flight.add_metric(
                self._labels(handler.node_id), instance.in_flight if instance else 0
            )
        circuit = GaugeMetricFamily(
            "logistik_handler_circuit_open",
            "1 while the instance's circuit is open or half-open (it gets no calls but probes).",
            labels=HANDLER_LABELS,
        )
        for handler in self._registry.handlers():
            instance = self._registry.instance(handler.node_id)
            is_open = instance is not None and instance.circuit != "closed"
            circuit.add_metric(self._labels(handler.node_id), 1 if is_open else 0)
        yield from (requests, answers, retries, latency, in_flight, circuit)

    def _topic_metrics(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        events = CounterMetricFamily("logistik_topic_events", "Records consumed.", labels=["topic"])
        published = CounterMetricFamily(
            "logistik_topic_published", "Answers published.", labels=["topic"]
        )
        failed = CounterMetricFamily(
            "logistik_topic_failed", "Records sent to a failed topic.", labels=["topic", "reason"]
        )
        for topic, count in self._figures.events_in.items():
            events.add_metric([topic], count)
        for topic, count in self._figures.published.items():
            published.add_metric([topic], count)
        for (topic, reason), count in self._figures.failed.items():
            failed.add_metric([topic, reason], count)
        deferred = CounterMetricFamily(
            "logistik_topic_deferred",
            "(event, group) pairs sent to the topic's retry topic after a failed call.",
            labels=["topic"],
        )
        for topic, count in self._figures.deferred.items():
            deferred.add_metric([topic], count)
        lag = GaugeMetricFamily(
            "logistik_consumer_lag",
            "Records behind the partition's end.",
            labels=["topic", "partition"],
        )
        lags = self._lag()
        for (topic, partition), behind in sorted(lags.items()):
            lag.add_metric([topic, str(partition)], behind)
        yield from (events, published, failed, deferred, lag)
        if self._not_fetched is not None:
            yield from self._fetch_metrics(lags, self._not_fetched())

    def _fetch_metrics(
        self, lags: dict[tuple[str, int], int], stalls: list[dict[str, Any]]
    ) -> Iterator[GaugeMetricFamily]:
        # Every partition consumed gets a sample, 0 while fetched, so that an alert on "> 0"
        # does not depend on a series appearing.
        labels = ["topic", "partition"]
        since = GaugeMetricFamily(
            "logistik_consumer_not_fetched_seconds",
            "How long the broker has held records of the partition that no fetch brought "
            "(0: fetched; see kafka.fetch_stalled_after_s).",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            "logistik_consumer_not_fetched_records",
            "Records the broker holds past logistik's position that no fetch brought.",
            labels=labels,
        )
        held = {(s["topic"], s["partition"]): s for s in stalls}
        for topic, partition in sorted({*lags, *held}):
            stall = held.get((topic, partition))
            since.add_metric([topic, str(partition)], stall["for_s"] if stall else 0)
            waiting.add_metric([topic, str(partition)], stall["waiting"] if stall else 0)
        yield from (since, waiting)


def metrics_registry(
    figures: Figures, registry: Registry, lag: Lag, not_fetched: NotFetched | None = None
) -> CollectorRegistry:
    """A registry with the router's metrics and the process' own figures."""
    collectors = CollectorRegistry()
    collectors.register(RouterCollector(figures, registry, lag, not_fetched))
    ProcessCollector(registry=collectors)
    PlatformCollector(registry=collectors)
    return collectors

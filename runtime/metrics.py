"""Prometheus metrics on an injected CollectorRegistry (no globals).

Counters that the data path already keeps (ModelStats) are read at scrape time by a collector,
so the request path pays nothing for them.
"""
from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.model import ModelState
from runtime.repository.registry import ModelRegistry

PREFIX = "model_runtime"


class ModelStatsCollector(Collector):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["model", "version"]
        requests = CounterMetricFamily(
            f"{PREFIX}_requests", "Inference requests by outcome", labels=[*labels, "outcome"]
        )
        rows = CounterMetricFamily(f"{PREFIX}_inference_rows", "Rows (batch items) inferred", labels=labels)
        executions = CounterMetricFamily(f"{PREFIX}_executions", "Model executions (batches)", labels=labels)
        queue_seconds = CounterMetricFamily(
            f"{PREFIX}_queue_duration_seconds", "Total time requests waited in the queue", labels=labels
        )
        queue_depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Requests waiting in the queue", labels=labels)
        state = GaugeMetricFamily(
            f"{PREFIX}_model_state", "1 for the state each model version is in", labels=[*labels, "state"]
        )
        for record in self._registry.records():
            key = [record.name, str(record.version)]
            for candidate in ModelState:
                state.add_metric([*key, candidate.value], 1.0 if record.state is candidate else 0.0)
            served = record.served
            if served is None:
                continue
            stats = served.stats
            requests.add_metric([*key, "success"], stats.success.count)
            requests.add_metric([*key, "failure"], stats.fail.count)
            rows.add_metric(key, stats.inference_count)
            executions.add_metric(key, stats.execution_count)
            queue_seconds.add_metric(key, stats.queue.ns / 1e9)
            queue_depth.add_metric(key, served.queue.stats.queued)
        yield from (requests, rows, executions, queue_seconds, queue_depth, state)


def build_registry(models: ModelRegistry) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(ModelStatsCollector(models))
    return registry


def build_app(registry: CollectorRegistry) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])

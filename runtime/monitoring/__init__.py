"""Monitoring: what the data path reports (observer), what it watches per version (plan, drift,
histograms), and what /metrics exports (catalogue, collectors). Prometheus metrics live on an
injected CollectorRegistry (no globals).

Modules, lowest first: catalogue (metric names, kinds, labels), histograms (bucketed numpy
arrays), drift (class and value watches, PSI), plan (monitoring.json / reference.json / label
files -> a per-version Plan), observer (the Observer protocol and MetricsObserver), collectors
(scrape-time families and build_registry). All but collectors sit below runtime.model; collectors
reads the model registry, so it is loaded only when asked for (runtime.monitoring.build_registry
or runtime.monitoring.collectors). The /metrics HTTP app is transport code: runtime.server.metrics.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.monitoring.catalogue import DEFAULT_LATENCY_BUCKETS, EXPORTED, PREFIX, MetricInfo, exposed_names
from runtime.monitoring.drift import ClassWatch, Drift, ValueWatch, population_stability_index
from runtime.monitoring.histograms import MAX_BUCKETS, ArrayHistogram, SlidingBins, parse_buckets
from runtime.monitoring.observer import (
    SUCCESS,
    BatchTiming,
    Detail,
    MetricsObserver,
    MonitoredModel,
    NullObserver,
    Observer,
    observer_for,
    outcome_of,
)
from runtime.monitoring.plan import FLUSH_BATCHES, MonitoringError, Plan, VersionInfo, build_plan

if TYPE_CHECKING:
    from runtime.monitoring.collectors import GpuCollector, RuntimeCollector, build_registry

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "EXPORTED",
    "FLUSH_BATCHES",
    "MAX_BUCKETS",
    "PREFIX",
    "SUCCESS",
    "ArrayHistogram",
    "BatchTiming",
    "ClassWatch",
    "Detail",
    "Drift",
    "GpuCollector",
    "MetricInfo",
    "MetricsObserver",
    "MonitoredModel",
    "MonitoringError",
    "NullObserver",
    "Observer",
    "Plan",
    "RuntimeCollector",
    "SlidingBins",
    "ValueWatch",
    "VersionInfo",
    "build_plan",
    "build_registry",
    "exposed_names",
    "observer_for",
    "outcome_of",
    "parse_buckets",
    "population_stability_index",
]

_COLLECTORS = frozenset({"GpuCollector", "RuntimeCollector", "build_registry"})


def __getattr__(name: str) -> Any:
    # collectors imports runtime.model (model states) and reads the registry: loading it here eagerly
    # would make `import runtime.model` (which needs the observer) circular.
    if name in _COLLECTORS:
        from runtime.monitoring import collectors

        return getattr(collectors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

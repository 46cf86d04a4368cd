"""Scrape-time collection: the observer's series and the registry's state (model states, queue
depths, load durations, traffic weights) as metric families (RuntimeCollector), GPU figures
through NVML (GpuCollector), and the CollectorRegistry that /metrics serves (build_registry).
A scrape costs the request path nothing.

The registry is seen through `ModelsView` (what runtime.repository.registry.ModelRegistry has), so
this package sits below runtime.model and the registry and imports neither.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from runtime.monitoring.catalogue import EXPORTED, PHASES, PREFIX
from runtime.monitoring.drift import ClassWatch
from runtime.monitoring.observer import NO_VERSION, MetricsObserver, ModelNames
from runtime.monitoring.plan import Plan

log = logging.getLogger(__name__)

READY = "READY"  # runtime.model.ModelState.READY's name: drift is exported for serving versions only


class _QueueStats(Protocol):
    @property
    def queued(self) -> int: ...


class _Queue(Protocol):
    @property
    def stats(self) -> _QueueStats: ...


class _Counted(Protocol):
    @property
    def count(self) -> int: ...

    @property
    def ns(self) -> int: ...


class _ModelStats(Protocol):
    @property
    def cache_hit(self) -> _Counted: ...

    @property
    def cache_miss(self) -> _Counted: ...


class _SequenceStats(Protocol):
    @property
    def starts(self) -> int: ...

    @property
    def ends(self) -> int: ...

    @property
    def idle_releases(self) -> int: ...


class _Sequencer(Protocol):
    @property
    def live(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def stats(self) -> _SequenceStats: ...


class _Served(Protocol):
    @property
    def queue(self) -> _Queue: ...

    @property
    def sequencer(self) -> _Sequencer | None: ...

    @property
    def stats(self) -> _ModelStats: ...


class VersionView(Protocol):
    """One version the registry knows (its VersionRecord)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def state(self) -> enum.Enum: ...

    @property
    def load_seconds(self) -> float: ...

    @property
    def served(self) -> _Served | None: ...


class EntryView(Protocol):
    """One model the registry knows (its ModelEntry)."""

    @property
    def name(self) -> str: ...

    @property
    def serving(self) -> Mapping[int, VersionView]: ...

    @property
    def weights(self) -> Mapping[int, float]: ...


class ModelsView(ModelNames, Protocol):
    """What the collector reads of the model registry at scrape time."""

    def records(self) -> Sequence[VersionView]: ...

    def entries(self) -> Sequence[EntryView]: ...


def _family(name: str) -> Any:
    info = EXPORTED[name]
    if info.kind == "counter":
        return CounterMetricFamily(name, info.help, labels=info.labels)
    if info.kind == "gauge":
        return GaugeMetricFamily(name, info.help, labels=info.labels)
    return HistogramMetricFamily(name, info.help, labels=info.labels)


class RuntimeCollector(Collector):
    """Model metrics at scrape time: the observer's series and the registry's state."""

    def __init__(self, models: ModelsView, observer: MetricsObserver | None = None) -> None:
        self._models = models
        self._observer = observer

    def collect(self) -> Iterator[Metric]:
        families = {name: _family(name) for name in EXPORTED if not name.startswith(f"{PREFIX}_gpu_")}
        self._collect_registry(families)
        if self._observer is not None and self._observer.detail != "off":
            self._collect_series(families)
        yield from families.values()

    def _collect_registry(self, f: dict[str, Any]) -> None:
        for record in self._models.records():
            key = [record.name, str(record.version)]
            for candidate in type(record.state):  # every model state: 1 for the one it is in
                f[f"{PREFIX}_model_state"].add_metric(
                    [*key, candidate.value], 1.0 if record.state is candidate else 0.0
                )
            if record.load_seconds:
                f[f"{PREFIX}_model_load_duration_seconds"].add_metric(key, record.load_seconds)
            if record.served is not None:
                sequencer = record.served.sequencer
                # A sequence model's requests wait in its sequence batcher, not in the (idle) batch queue.
                queued = record.served.queue.stats.queued if sequencer is None else sequencer.queued
                f[f"{PREFIX}_queue_depth"].add_metric(key, queued)
                if sequencer is not None:
                    f[f"{PREFIX}_live_sequences"].add_metric(key, sequencer.live)
                    f[f"{PREFIX}_sequence_starts"].add_metric(key, sequencer.stats.starts)
                    f[f"{PREFIX}_sequence_ends"].add_metric(key, sequencer.stats.ends)
                    f[f"{PREFIX}_sequence_idle_releases"].add_metric(key, sequencer.stats.idle_releases)
                hit, miss = record.served.stats.cache_hit, record.served.stats.cache_miss
                if hit.count or miss.count:  # a version that uses the response cache
                    f[f"{PREFIX}_cache_hits"].add_metric(key, hit.count)
                    f[f"{PREFIX}_cache_misses"].add_metric(key, miss.count)
                    f[f"{PREFIX}_cache_duration_seconds"].add_metric([*key, "hit"], hit.ns / 1e9)
                    f[f"{PREFIX}_cache_duration_seconds"].add_metric([*key, "miss"], miss.ns / 1e9)
        for entry in self._models.entries():
            serving = sorted(v for v, r in entry.serving.items() if r.served is not None)
            if not serving:
                continue
            weights = entry.weights
            for version in serving:
                if weights:
                    weight = float(weights.get(version, 0.0))
                else:
                    weight = 1.0 if version == serving[-1] else 0.0
                f[f"{PREFIX}_traffic_weight"].add_metric([entry.name, str(version)], weight)

    def _collect_series(self, f: dict[str, Any]) -> None:
        observer = self._observer
        assert observer is not None
        self._sweep(observer)
        requests = f[f"{PREFIX}_requests"]
        latency = f[f"{PREFIX}_request_duration_seconds"]
        for series in observer.series():
            observer.flush(series)
            key = [series.model, series.version]
            for protocol, by_protocol in sorted(series.protocols.items()):
                if by_protocol.success:
                    requests.add_metric([*key, protocol, "success", ""], by_protocol.success)
                for reason, count in sorted(by_protocol.failures.items()):
                    requests.add_metric([*key, protocol, "failure", reason], count)
                if by_protocol.success:
                    histogram = by_protocol.latency
                    latency.add_metric([*key, protocol], histogram.buckets(), histogram.sum)
            if series.version == "":
                continue
            if observer.tracks_inflight:
                f[f"{PREFIX}_inflight_requests"].add_metric(key, max(0, series.inflight))
            f[f"{PREFIX}_inference_rows"].add_metric(key, series.rows)
            f[f"{PREFIX}_executions"].add_metric(key, series.executions)
            if series.executions:
                f[f"{PREFIX}_queue_duration_seconds"].add_metric(
                    key, series.queue.buckets(), series.queue.sum
                )
                for phase, histogram in zip(PHASES, series.compute):
                    f[f"{PREFIX}_compute_duration_seconds"].add_metric(
                        [*key, phase], histogram.buckets(), histogram.sum
                    )
                f[f"{PREFIX}_batch_size"].add_metric(key, series.batch.buckets(), series.batch.sum)
            if series.plan is not None:
                owner = series.owner() if series.owner is not None else None
                live = owner is not None and owner.state.name == READY
                self._collect_plan(f, key, series.plan, live)

    @staticmethod
    def _collect_plan(f: dict[str, Any], key: list[str], plan: Plan, live: bool) -> None:
        for kind, watches in (("output", plan.outputs), ("input", plan.inputs)):
            for name, watch in watches:
                if isinstance(watch, ClassWatch):
                    if watch.counts is not None:
                        for label, count in zip(watch.classes, watch.counts.tolist()):
                            f[f"{PREFIX}_prediction_class"].add_metric([*key, name, label], count)
                else:
                    for feature, histogram in watch.histograms.items():
                        if kind == "output":
                            f[f"{PREFIX}_prediction_value"].add_metric(
                                [*key, name], histogram.buckets(), histogram.sum
                            )
                        else:
                            f[f"{PREFIX}_input_value"].add_metric(
                                [*key, name, feature], histogram.buckets(), histogram.sum
                            )
                drift = watch.drift
                if drift is not None and live:
                    labels = [*key, kind, name]
                    f[f"{PREFIX}_drift_window_observations"].add_metric(labels, drift.window.filled)
                    if drift.window.filled:
                        f[f"{PREFIX}_drift_psi"].add_metric(labels, drift.psi())

    def _sweep(self, observer: MetricsObserver) -> None:
        """Forget series of versions (and models) the registry no longer knows at all."""
        known_versions = {(r.name, r.version) for r in self._models.records()}
        known_names = {e.name for e in self._models.entries()}
        for model, version in observer.series_keys():
            if model == "":
                continue
            if version == NO_VERSION and model in known_names:
                continue
            if (model, version) not in known_versions:
                observer.forget(model, version)


class GpuCollector(Collector):
    """GPU memory and utilisation through NVML (package nvidia-ml-py), for every GPU present."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._pid = os.getpid()

    @classmethod
    def create(cls, loader: Callable[[], Any] | None = None) -> GpuCollector | None:
        """A collector when NVML loads and sees a GPU, else None."""
        try:
            nvml = loader() if loader is not None else __import__("pynvml")
            nvml.nvmlInit()
            if nvml.nvmlDeviceGetCount() < 1:
                return None
        except Exception as exc:  # no package, no driver, no GPU: no GPU metrics
            log.debug("no GPU metrics: %s", exc)
            return None
        return cls(nvml)

    def collect(self) -> Iterator[Metric]:
        nvml = self._nvml
        families = {name: _family(name) for name in EXPORTED if name.startswith(f"{PREFIX}_gpu_")}
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                gpu = [str(index)]
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                families[f"{PREFIX}_gpu_memory_used_bytes"].add_metric(gpu, float(memory.used))
                families[f"{PREFIX}_gpu_memory_total_bytes"].add_metric(gpu, float(memory.total))
                utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
                families[f"{PREFIX}_gpu_utilization_ratio"].add_metric(gpu, utilization.gpu / 100.0)
                try:
                    processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                except Exception as exc:  # e.g. not supported on this GPU or driver
                    log.debug("GPU %d: no per-process memory: %s", index, exc)
                    continue
                mine = sum(int(p.usedGpuMemory or 0) for p in processes if p.pid == self._pid)
                families[f"{PREFIX}_gpu_process_memory_bytes"].add_metric(gpu, float(mine))
        except Exception as exc:
            log.warning("GPU metrics unavailable this scrape: %s", exc)
        yield from families.values()


def build_registry(
    models: ModelsView, observer: MetricsObserver | None = None, gpu: bool = True
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    if observer is not None:
        observer.attach(models)
    registry.register(RuntimeCollector(models, observer))
    collector = GpuCollector.create() if gpu else None
    if collector is not None:
        registry.register(collector)
    return registry


"""What the data path reports as it runs (the Observer protocol), and the observer that turns it into
metrics and request logs (MetricsObserver).

The engine reports each finished request and the model each executed batch. Calls happen on the
event loop and must be cheap and never raise. `MetricsObserver` keeps plain counters per model
version and protocol, updated on the event loop without locks; latencies, batch timings and
prediction and drift statistics are kept as they come and bucketed in bulk with numpy (every few
hundred batches and before each scrape), so the request path pays a few list appends. It never
raises: a failure is logged once per place. The collectors (collectors.py) read it at scrape time.

Models are seen through `MonitoredModel` (what ServedModel has), so this module sits below
runtime.model and imports neither it nor the registry.
"""
from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from runtime.errors import (
    ExecutionError,
    InvalidInput,
    ModelNotFound,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    RuntimeServingError,
    Unavailable,
)
from runtime.monitoring.catalogue import BATCH_SIZE_BUCKETS, DEFAULT_LATENCY_BUCKETS, PROTOCOLS
from runtime.monitoring.histograms import ArrayHistogram, parse_buckets
from runtime.monitoring.plan import MonitoringError, Plan, PlannedModel, VersionInfo, build_plan
from runtime.types import Array, InferRequest

log = logging.getLogger(__name__)
request_log = logging.getLogger("runtime.requests")

Detail = Literal["full", "basic", "off"]

MAX_PENDING_BATCHES = 256  # batches kept while a version's monitoring plan is read from disk
SETTLE_BATCHES = 1024  # batch timings bucketed together (see VersionSeries.settle)
SETTLE_VALUES = 4096  # latencies bucketed together
NO_VERSION = 0  # series key of requests that never reached a version (label version="")


class MonitoredModel(PlannedModel, Protocol):
    """What observers read of a loaded version (ServedModel has it); weak-referenceable."""

    @property
    def state(self) -> enum.Enum: ...


class ModelNames(Protocol):
    """What the observer asks the model registry: whether it knows a model name."""

    def entry(self, name: str) -> object | None: ...


# Request outcomes, the `reason` label of failures.
SUCCESS = "success"
OUTCOMES = (
    SUCCESS, "invalid_input", "not_found", "queue_full", "unavailable", "timeout", "cancelled", "execution_error", "internal",
)


def outcome_of(error: BaseException) -> str:
    if isinstance(error, QueueFull):
        return "queue_full"
    if isinstance(error, InvalidInput):
        return "invalid_input"
    if isinstance(error, ModelNotFound):
        return "not_found"
    if isinstance(error, RequestTimeout):
        return "timeout"
    if isinstance(error, (RequestCancelled, asyncio.CancelledError)):
        return "cancelled"
    if isinstance(error, Unavailable):
        return "unavailable"
    if isinstance(error, ExecutionError):
        return "execution_error"
    if isinstance(error, RuntimeServingError):
        return error.code.value
    return "internal"


@dataclass(frozen=True, slots=True)
class BatchTiming:
    rows: int
    queue_seconds: Sequence[float]  # one per request in the batch
    input_seconds: float  # gather inputs into the batch
    infer_seconds: float  # model execution
    output_seconds: float  # split outputs back
    traces: Sequence[Any] = ()  # per request, its span while traced (runtime/tracing), else None


class Observer(Protocol):
    def request_started(self, request: InferRequest, model: MonitoredModel) -> None: ...

    def request_finished(
        self, request: InferRequest, model: MonitoredModel | None, outcome: str, seconds: float
    ) -> None: ...

    def batch_executed(
        self, model: MonitoredModel, timing: BatchTiming, inputs: dict[str, Array], outputs: dict[str, Array]
    ) -> None: ...


class NullObserver:
    def request_started(self, request: InferRequest, model: MonitoredModel) -> None:
        pass

    def request_finished(
        self, request: InferRequest, model: MonitoredModel | None, outcome: str, seconds: float
    ) -> None:
        pass

    def batch_executed(
        self, model: MonitoredModel, timing: BatchTiming, inputs: dict[str, Array], outputs: dict[str, Array]
    ) -> None:
        pass


# ---- the observer ---------------------------------------------------------------------------


class ProtocolSeries:
    """Requests of one version over one protocol: successes, failures by reason, latency.

    Latencies are appended to a list and bucketed with numpy in bulk (settle), which costs the
    request path one list append instead of a bucket search.
    """

    __slots__ = ("failures", "latency", "success", "waiting")

    def __init__(self, latency_bounds: Sequence[float]) -> None:
        self.success = 0
        self.failures: dict[str, int] = {}
        self.latency = ArrayHistogram(latency_bounds)
        self.waiting: list[float] = []

    def settle(self) -> None:
        waiting = self.waiting
        if waiting:
            self.waiting = []
            self.latency.observe_array(np.asarray(waiting, dtype=np.float64))


class VersionSeries:
    """Everything recorded for one (model, version), updated on the event loop.

    Batch timings are kept as they come and counted in bulk (settle) every SETTLE_BATCHES batches
    and before each scrape.
    """

    __slots__ = (
        "batch",
        "compute",
        "executions",
        "inflight",
        "latency_bounds",
        "model",
        "owner",
        "pending",
        "plan",
        "protocols",
        "queue",
        "rows",
        "timings",
        "version",
    )

    def __init__(self, model: str, version: str, latency_bounds: Sequence[float]) -> None:
        self.model = model
        self.version = version
        self.latency_bounds = latency_bounds
        self.protocols: dict[str, ProtocolSeries] = {}
        self.queue = ArrayHistogram(latency_bounds)
        self.compute = (
            ArrayHistogram(latency_bounds),
            ArrayHistogram(latency_bounds),
            ArrayHistogram(latency_bounds),
        )
        self.batch = ArrayHistogram(BATCH_SIZE_BUCKETS)
        self.rows = 0
        self.executions = 0
        self.timings: list[BatchTiming] = []
        self.inflight = 0
        self.owner: weakref.ref[MonitoredModel] | None = None  # the loaded model the plan was built for
        self.plan: Plan | None = None
        self.pending: list[tuple[dict[str, Array], dict[str, Array], int]] | None = None

    def protocol(self, name: str) -> ProtocolSeries:
        """The series of a protocol; any name but http and grpc counts as "other" (bounded labels)."""
        if name not in PROTOCOLS:
            name = "other"
        series = self.protocols.get(name)
        if series is None:
            series = self.protocols[name] = ProtocolSeries(self.latency_bounds)
        return series

    def settle(self) -> None:
        """Count the batch timings and latencies kept since the last time."""
        for by_protocol in self.protocols.values():
            by_protocol.settle()
        timings = self.timings
        if not timings:
            return
        self.timings = []
        count = len(timings)
        # Every array first, so that a bad timing changes nothing (the batch of timings is dropped).
        rows = np.fromiter((t.rows for t in timings), dtype=np.int64, count=count)
        phases = [
            np.fromiter((t.input_seconds for t in timings), dtype=np.float64, count=count),
            np.fromiter((t.infer_seconds for t in timings), dtype=np.float64, count=count),
            np.fromiter((t.output_seconds for t in timings), dtype=np.float64, count=count),
        ]
        waits = np.fromiter(itertools.chain.from_iterable(t.queue_seconds for t in timings), dtype=np.float64)
        self.rows += int(rows.sum())
        self.executions += count
        self.batch.observe_array(rows)
        for histogram, seconds in zip(self.compute, phases):
            histogram.observe_array(seconds)
        self.queue.observe_array(waits)


class MetricsObserver:
    """The data path's Observer: request and batch metrics, prediction distributions, drift, request logs.

    detail: "full" records everything; "basic" leaves out prediction, input and drift statistics;
    "off" records nothing and only writes the sampled request log.
    """

    def __init__(
        self,
        latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
        drift_window: int = 1000,
        request_log_sample_rate: float = 0.0,
        detail: Detail = "full",
    ) -> None:
        if detail not in ("full", "basic", "off"):
            raise ValueError(f"metrics detail must be full, basic or off, got {detail!r}")
        if drift_window < 1:
            raise ValueError(f"drift window must be >= 1, got {drift_window}")
        if not 0.0 <= request_log_sample_rate <= 1.0:
            raise ValueError(f"request log sample rate must be in [0, 1], got {request_log_sample_rate}")
        self.latency_buckets = parse_buckets(latency_buckets, "latency buckets")
        self.drift_window = drift_window
        self.detail = detail
        self._record = detail != "off"
        self._predictions = detail == "full"
        self._log_rate = request_log_sample_rate
        self._series: dict[tuple[str, int], VersionSeries] = {}
        self._models: ModelNames | None = None
        self._failures_logged: set[str] = set()
        self._loading: set[asyncio.Future[Plan]] = set()
        self._inflight_tracked = False

    @classmethod
    def from_settings(cls, settings: Any, detail: Detail | None = None) -> MetricsObserver:
        """From Settings; `detail` defaults to settings.metrics_detail where that exists, else full."""
        bounds = [
            part for item in settings.metrics_latency_buckets for part in str(item).split(",") if part.strip()
        ]
        return cls(
            parse_buckets(bounds, "--metrics-latency-buckets"),
            settings.drift_window,
            settings.request_log_sample_rate,
            detail if detail is not None else getattr(settings, "metrics_detail", "full"),
        )

    def attach(self, models: ModelNames) -> None:
        """Know the registry: names it holds are label values, any other name is reported as model=""."""
        self._models = models

    # ---- Observer -----------------------------------------------------------------------------

    def request_started(self, request: InferRequest, model: MonitoredModel) -> None:
        """Optional hook: a request was admitted to `model` (feeds the in-flight gauge)."""
        if not self._record:
            return
        try:
            self._inflight_tracked = True
            self._series_for(model).inflight += 1
        except Exception:
            self._failed("request_started")

    def request_finished(
        self, request: InferRequest, model: MonitoredModel | None, outcome: str, seconds: float
    ) -> None:
        # On every request, so: no method calls on the common path, latencies bucketed in bulk later.
        try:
            if self._record:
                if model is not None:
                    series = self._series.get((model.name, model.version))
                    if series is None:
                        series = self._series_for(model)
                    if self._inflight_tracked:
                        series.inflight -= 1
                else:
                    series = self._unrouted(request.model_name)
                by_protocol = series.protocols.get(request.protocol) or series.protocol(request.protocol)
                if outcome == SUCCESS:
                    by_protocol.success += 1
                    waiting = by_protocol.waiting
                    waiting.append(seconds)
                    if len(waiting) >= SETTLE_VALUES:
                        by_protocol.settle()
                else:
                    failures = by_protocol.failures
                    failures[outcome] = failures.get(outcome, 0) + 1
            if self._log_rate and random.random() < self._log_rate:
                self._log_request(request, model, outcome, seconds)
        except Exception:
            self._failed("request_finished")

    def batch_executed(
        self, model: MonitoredModel, timing: BatchTiming, inputs: dict[str, Array], outputs: dict[str, Array]
    ) -> None:
        if not self._record:
            return
        try:
            series = self._series.get((model.name, model.version))
            if series is None:
                series = self._series_for(model)
            timings = series.timings
            timings.append(timing)
            if len(timings) >= SETTLE_BATCHES:
                series.settle()
            if self._predictions:
                self._watch(series, model, inputs, outputs, timing.rows)
        except Exception:
            self._failed("batch_executed")

    # ---- public helpers ---------------------------------------------------------------------

    def forget(self, name: str, version: int | None = None) -> None:
        """Drop the series of a model (or one version), e.g. once it is deleted for good."""
        for key in [k for k in self._series if k[0] == name and (version is None or k[1] == version)]:
            del self._series[key]

    async def settled(self) -> None:
        """Wait until every monitoring plan being read from disk is in use (tests, shutdown)."""
        while self._loading:
            await asyncio.gather(*list(self._loading), return_exceptions=True)
            await asyncio.sleep(0)

    def flush(self, series: VersionSeries) -> None:
        """Count everything a series keeps for bulk counting (the collector calls this before each scrape)."""
        try:
            series.settle()
        except Exception:
            series.timings.clear()
            self._failed("batch statistics")
        if series.plan is None:
            return
        try:
            series.plan.flush()
        except Exception:
            series.plan.held.clear()
            self._failed("prediction statistics")

    def series(self) -> list[VersionSeries]:
        return list(self._series.values())

    def series_keys(self) -> list[tuple[str, int]]:
        """(model, version) of every series; version NO_VERSION for requests that reached no version."""
        return list(self._series)

    @property
    def tracks_inflight(self) -> bool:
        """Whether the engine reports admissions (request_started), so in-flight counts are known."""
        return self._inflight_tracked

    # ---- internals --------------------------------------------------------------------------

    def _series_for(self, model: MonitoredModel) -> VersionSeries:
        key = (model.name, model.version)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = VersionSeries(model.name, str(model.version), self.latency_buckets)
        return series

    def _unrouted(self, name: str) -> VersionSeries:
        """Series of requests that reached no version: the model's name only if the registry knows it."""
        models = self._models
        label = name if models is not None and models.entry(name) is not None else ""
        key = (label, NO_VERSION)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = VersionSeries(label, "", self.latency_buckets)
        return series

    def _watch(
        self,
        series: VersionSeries,
        model: MonitoredModel,
        inputs: dict[str, Array],
        outputs: dict[str, Array],
        rows: int,
    ) -> None:
        owner = series.owner
        if owner is None or owner() is not model:
            self._start_plan(series, model)
        if series.pending is not None:  # this load's plan is being read: keep the batch for it
            if len(series.pending) < MAX_PENDING_BATCHES:
                series.pending.append((inputs, outputs, rows))
        elif series.plan is not None:
            series.plan.update(inputs, outputs, rows)

    def _start_plan(self, series: VersionSeries, model: MonitoredModel) -> None:
        """Read the plan of a newly loaded model (a first load, or a reload of the same version).

        The previous load's plan keeps being exported until the new one takes over its counters.
        """
        owner = weakref.ref(model)
        series.owner = owner
        series.pending = []
        info = VersionInfo.of(model)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop (tests): read it here
            self._plan_built(series, owner, self._build(info))
            return
        future = loop.run_in_executor(None, self._build, info)
        self._loading.add(future)

        def done(finished: asyncio.Future[Plan]) -> None:
            self._loading.discard(finished)
            plan = Plan(batching=info.batching) if finished.cancelled() else finished.result()
            self._plan_built(series, owner, plan)

        future.add_done_callback(done)

    def _build(self, info: VersionInfo) -> Plan:
        try:
            return build_plan(info, self.drift_window)
        except Exception as exc:
            reason = exc if isinstance(exc, MonitoringError) else repr(exc)
            log.error(
                "model %r version %d: prediction monitoring is off: %s", info.name, info.version, reason
            )
            return Plan(batching=info.batching)

    def _plan_built(self, series: VersionSeries, owner: weakref.ref[MonitoredModel], plan: Plan) -> None:
        if series.owner is not owner:  # a newer load of this version took over meanwhile
            return
        pending = series.pending or []
        try:
            previous = series.plan
            if previous is not None:
                previous.flush()
                plan.inherit(previous)
        except Exception:
            self._failed("prediction statistics")
        series.plan = plan
        series.pending = None
        try:
            for inputs, outputs, rows in pending:
                plan.update(inputs, outputs, rows)
        except Exception:
            self._failed("batch_executed")

    def _log_request(
        self, request: InferRequest, model: MonitoredModel | None, outcome: str, seconds: float
    ) -> None:
        fields: dict[str, Any] = {
            "event": "request",
            "model": request.model_name,
            "version": str(model.version) if model is not None else request.model_version,
            "protocol": request.protocol,
            "outcome": outcome,
            "duration_ms": round(seconds * 1e3, 3),
        }
        if request.id:
            fields["id"] = request.id
        text = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
        request_log.info("%s", text, extra={"fields": fields})

    def _failed(self, where: str) -> None:
        if where in self._failures_logged:
            return
        self._failures_logged.add(where)
        log.exception("metrics: %s failed; later failures there are not logged", where)


def observer_for(settings: Any) -> MetricsObserver | None:
    """The observer the settings ask for: metrics on, or a request log to write; None when neither."""
    detail: Detail = getattr(settings, "metrics_detail", "full") if settings.allow_metrics else "off"
    if detail == "off" and not settings.request_log_sample_rate:
        return None
    return MetricsObserver.from_settings(settings, detail)

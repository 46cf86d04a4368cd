"""Prometheus metrics on an injected CollectorRegistry (no globals).

Two halves:

* `MetricsObserver` is what the data path reports to (`runtime.observer.Observer`): every finished
  request and every executed batch. It keeps plain counters per model version and protocol,
  updated on the event loop without locks; latencies, batch timings and prediction and drift
  statistics are kept as they come and bucketed in bulk with numpy (every few hundred batches and
  before each scrape), so the request path pays a few list appends. It never raises: a failure is
  logged once per place.
* `RuntimeCollector` turns those, plus the registry's state (model states, queue depths, load
  durations, traffic weights), into metric families at scrape time, so a scrape costs the
  request path nothing.

Per-model prediction monitoring is configured by a `monitoring.json` sidecar and drift by a
`reference.json` (see the README's Monitoring section); both are read off the event loop.
Label cardinality is bounded: unknown model names are reported as model="", classes, features
and buckets are capped, and every other label takes values from a fixed set.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import random
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.model import ModelState
from runtime.observer import SUCCESS, BatchTiming
from runtime.types import Array, InferRequest, TensorSpec

if TYPE_CHECKING:
    from runtime.model import ServedModel
    from runtime.repository.registry import ModelRegistry

log = logging.getLogger(__name__)
request_log = logging.getLogger("runtime.requests")

PREFIX = "model_runtime"
MONITORING_FILE = "monitoring.json"
REFERENCE_FILE = "reference.json"

Detail = Literal["full", "basic", "off"]

DEFAULT_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Value histograms: fine steps over [0, 1] (probabilities, scores), coarse tails for regression.
DEFAULT_VALUE_BUCKETS = (
    -100.0,
    -10.0,
    -1.0,
    -0.5,
    0.0,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    2.5,
    5.0,
    10.0,
    100.0,
    1000.0,
)
# A float output [batch, K] with 2 <= K <= AUTO_MAX_CLASSES counts argmax classes by default.
AUTO_MAX_CLASSES = 32
# Other numeric outputs get a value histogram by default when a row holds at most this many values.
AUTO_MAX_VALUES_PER_ROW = 256
MAX_CLASSES = 1000  # classes of one output, even with a label file or monitoring.json
MAX_BUCKETS = 64
MAX_FEATURES = 64
MAX_PENDING_BATCHES = 256  # batches kept while a version's monitoring plan is read from disk
SETTLE_BATCHES = 1024  # batch timings bucketed together (see VersionSeries.settle)
SETTLE_VALUES = 4096  # latencies bucketed together
FLUSH_BATCHES = 256  # batches counted together (see Plan) ...
FLUSH_ROWS = 4096  # ... or rows ...
FLUSH_BYTES = 4 * 1024 * 1024  # ... or bytes of tensors kept alive meanwhile
PSI_EPSILON = 1e-4
PROTOCOLS = frozenset({"http", "grpc"})
PHASES = ("input", "infer", "output")
NO_VERSION = 0  # series key of requests that never reached a version (label version="")


@dataclass(frozen=True, slots=True)
class MetricInfo:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...]


_MV = ("model", "version")
EXPORTED: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo(
            f"{PREFIX}_requests",
            "counter",
            "Inference requests by outcome; reason names the failure",
            (*_MV, "protocol", "outcome", "reason"),
        ),
        MetricInfo(
            f"{PREFIX}_request_duration_seconds",
            "histogram",
            "End-to-end latency of successful inference requests",
            (*_MV, "protocol"),
        ),
        MetricInfo(f"{PREFIX}_queue_duration_seconds", "histogram", "Time requests waited in the queue", _MV),
        MetricInfo(
            f"{PREFIX}_compute_duration_seconds",
            "histogram",
            "Time per batch: phase input (gather), infer (model run), output (split)",
            (*_MV, "phase"),
        ),
        MetricInfo(f"{PREFIX}_batch_size", "histogram", "Rows per executed batch", _MV),
        MetricInfo(f"{PREFIX}_inference_rows", "counter", "Rows (batch items) inferred", _MV),
        MetricInfo(f"{PREFIX}_executions", "counter", "Model executions (batches)", _MV),
        MetricInfo(f"{PREFIX}_queue_depth", "gauge", "Requests waiting in the queue", _MV),
        MetricInfo(
            f"{PREFIX}_inflight_requests",
            "gauge",
            "Requests admitted to the version and not yet answered",
            _MV,
        ),
        MetricInfo(
            f"{PREFIX}_model_state", "gauge", "1 for the state each model version is in", (*_MV, "state")
        ),
        MetricInfo(
            f"{PREFIX}_model_load_duration_seconds", "gauge", "How long the version took to load", _MV
        ),
        MetricInfo(
            f"{PREFIX}_traffic_weight",
            "gauge",
            "Share of requests naming no version routed to each serving version (weights as set)",
            _MV,
        ),
        MetricInfo(
            f"{PREFIX}_prediction_class",
            "counter",
            "Predictions per class (argmax, or its label)",
            (*_MV, "output", "class"),
        ),
        MetricInfo(f"{PREFIX}_prediction_value", "histogram", "Values of numeric outputs", (*_MV, "output")),
        MetricInfo(
            f"{PREFIX}_input_value",
            "histogram",
            "Values of monitored inputs (feature: element index, or all)",
            (*_MV, "input", "feature"),
        ),
        MetricInfo(
            f"{PREFIX}_drift_psi",
            "gauge",
            "Population stability index of the sliding window against the version's reference",
            (*_MV, "kind", "tensor"),
        ),
        MetricInfo(
            f"{PREFIX}_drift_window_observations",
            "gauge",
            "Observations in the drift window",
            (*_MV, "kind", "tensor"),
        ),
        MetricInfo(f"{PREFIX}_gpu_memory_used_bytes", "gauge", "GPU memory in use (all processes)", ("gpu",)),
        MetricInfo(f"{PREFIX}_gpu_memory_total_bytes", "gauge", "GPU memory", ("gpu",)),
        MetricInfo(
            f"{PREFIX}_gpu_process_memory_bytes", "gauge", "GPU memory used by this process", ("gpu",)
        ),
        MetricInfo(
            f"{PREFIX}_gpu_utilization_ratio",
            "gauge",
            "GPU busy fraction over the last sample period",
            ("gpu",),
        ),
    )
}
# From prometheus_client's ProcessCollector (Linux) and PlatformCollector.
PROCESS_METRICS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
    "python_info",
)


# ---- small numeric building blocks ----------------------------------------------------------


def parse_buckets(values: Iterable[float | int | str], what: str = "buckets") -> tuple[float, ...]:
    """Sorted, distinct, finite bucket bounds; ValueError naming `what` otherwise."""
    try:
        bounds = sorted({float(v) for v in values})
    except (TypeError, ValueError):
        raise ValueError(f"{what}: every bound must be a number") from None
    if not bounds:
        raise ValueError(f"{what}: give at least one bound")
    if any(not math.isfinite(b) for b in bounds):
        raise ValueError(f"{what}: bounds must be finite (+Inf is always added)")
    if len(bounds) > MAX_BUCKETS:
        raise ValueError(f"{what}: at most {MAX_BUCKETS} bounds, got {len(bounds)}")
    return tuple(bounds)


_go_float: Callable[[float], str] = floatToGoString  # how prometheus_client writes `le`


def _cumulative(bounds: Sequence[float], counts: Iterable[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running = 0
    labels = [_go_float(b) for b in bounds] + ["+Inf"]
    for label, count in zip(labels, counts):
        running += int(count)
        buckets.append((label, running))
    return buckets


class ArrayHistogram:
    """Per-bucket counts and a sum with Prometheus `le` semantics, fed whole arrays at once (numpy).

    Non-finite values are left out. Values are bucketed in bulk, never one at a time: callers keep
    them in a list and hand the list over now and then (see VersionSeries.settle).
    """

    __slots__ = ("bounds", "counts", "edges", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.edges = np.asarray(self.bounds, dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self.sum = 0.0

    def observe_array(self, values: Array) -> None:
        flat = values.reshape(-1)
        if flat.dtype.kind == "f":
            finite = np.isfinite(flat)
            if not finite.all():
                flat = flat[finite]
        if flat.size == 0:
            return
        self.counts += np.bincount(np.searchsorted(self.edges, flat, side="left"), minlength=self.counts.size)
        self.sum += float(flat.sum(dtype=np.float64))

    def buckets(self) -> list[tuple[str, float]]:
        return _cumulative(self.bounds, self.counts.tolist())


class SlidingBins:
    """Counts per bin of the last `window` observations (a ring of bin indices)."""

    __slots__ = ("counts", "filled", "pos", "ring", "window")

    def __init__(self, bins: int, window: int) -> None:
        if window < 1:
            raise ValueError(f"drift window must be >= 1, got {window}")
        self.window = window
        self.ring = np.zeros(window, dtype=np.int32)
        self.pos = 0
        self.filled = 0
        self.counts = np.zeros(bins, dtype=np.int64)

    def add(self, indices: Array) -> None:
        indices = indices.reshape(-1)
        size = indices.size
        if size == 0:
            return
        window = self.window
        bins = self.counts.size
        if size >= window:
            self.ring[:] = indices[-window:]
            self.pos = 0
            self.filled = window
            self.counts = np.bincount(self.ring, minlength=bins).astype(np.int64)
            return
        end = self.pos + size
        if end <= window:
            old = self.ring[self.pos : end]
            stale = old[: max(0, min(size, self.filled - self.pos))]
            if stale.size:
                self.counts -= np.bincount(stale, minlength=bins)
            self.ring[self.pos : end] = indices
        else:
            positions = (self.pos + np.arange(size)) % window
            old = self.ring[positions]
            stale = old[positions < self.filled]
            if stale.size:
                self.counts -= np.bincount(stale, minlength=bins)
            self.ring[positions] = indices
        self.counts += np.bincount(indices, minlength=bins)
        self.pos = end % window
        self.filled = min(window, self.filled + size)


def population_stability_index(expected: Array, actual: Array, epsilon: float = PSI_EPSILON) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins of two distributions; empty bins count as `epsilon`."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e = np.clip(e / e.sum(), epsilon, None)
    a = np.clip(a / a.sum(), epsilon, None)
    return float(np.sum((a - e) * np.log(a / e)))


# ---- per-version monitoring plan: what to watch in each batch ---------------------------------


class Drift:
    """A reference distribution and the sliding window compared with it."""

    __slots__ = ("expected", "window")

    def __init__(self, expected: Array, window: int) -> None:
        self.expected = expected
        self.window = SlidingBins(expected.size, window)

    def psi(self) -> float:
        return population_stability_index(self.expected, self.window.counts)


class ClassWatch:
    """argmax per row of a [rows, K] output: a counter per class and/or class drift."""

    __slots__ = ("classes", "counts", "drift", "tensor")

    def __init__(self, tensor: str, classes: list[str], count: bool, drift: Drift | None) -> None:
        self.tensor = tensor
        self.classes = classes
        self.counts = np.zeros(len(classes), dtype=np.int64) if count else None
        self.drift = drift

    def update(self, array: Array, rows: int) -> None:
        k = len(self.classes)
        if array.size != rows * k or array.dtype.kind not in "fiub":
            return  # not this model's declared shape: nothing sensible to count
        winners = array.reshape(rows, k).argmax(axis=1)
        if self.counts is not None:
            self.counts += np.bincount(winners, minlength=k)
        if self.drift is not None:
            self.drift.window.add(winners)


class ValueWatch:
    """Values of a numeric tensor: a histogram over all values or per feature, and/or value drift."""

    __slots__ = ("columns", "cuts", "drift", "drift_feature", "edges", "features", "histograms", "tensor")

    def __init__(
        self,
        tensor: str,
        buckets: Sequence[float] | None,
        features: Sequence[int] | None,
        drift: Drift | None = None,
        cuts: Array | None = None,
        drift_feature: int | None = None,
    ) -> None:
        self.tensor = tensor
        self.features = list(features) if features else None
        self.histograms: dict[str, ArrayHistogram] = {}
        self.edges = np.asarray(buckets if buckets is not None else (), dtype=np.float64)
        self.columns = np.asarray(self.features or (), dtype=np.intp)
        if buckets is not None:
            keys = [str(f) for f in self.features] if self.features else [""]
            self.histograms = {key: ArrayHistogram(buckets) for key in keys}
        self.drift = drift
        self.cuts = cuts
        self.drift_feature = drift_feature

    def update(self, array: Array, rows: int) -> None:
        if array.dtype.kind not in "fiu" or array.size == 0 or rows == 0 or array.size % rows:
            return
        if self.histograms:
            if self.features is None:
                self.histograms[""].observe_array(array)
            else:
                self._observe_features(array.reshape(rows, -1))
        if self.drift is not None and self.cuts is not None:
            values = array if self.drift_feature is None else self._column(array, rows, self.drift_feature)
            if values is None:
                return
            flat = values.reshape(-1)
            if flat.dtype.kind == "f":
                flat = flat[np.isfinite(flat)]
            self.drift.window.add(np.searchsorted(self.cuts, flat, side="right"))

    def _observe_features(self, table: Array) -> None:
        """Every chosen feature's histogram in one pass: one searchsorted and one bincount for all."""
        assert self.features is not None
        if int(self.columns.max()) >= table.shape[1] or (
            table.dtype.kind == "f" and not np.isfinite(table).all()
        ):
            for feature in self.features:  # the slow way: missing columns or non-finite values
                if feature < table.shape[1]:
                    self.histograms[str(feature)].observe_array(table[:, feature])
            return
        block = table[:, self.columns]
        slots = self.edges.size + 1
        index = np.searchsorted(self.edges, block, side="left") + np.arange(len(self.features)) * slots
        counts = np.bincount(index.reshape(-1), minlength=slots * len(self.features)).reshape(
            len(self.features), slots
        )
        sums = block.sum(axis=0, dtype=np.float64).tolist()
        for position, histogram in enumerate(self.histograms.values()):
            histogram.counts += counts[position]
            histogram.sum += sums[position]

    @staticmethod
    def _column(array: Array, rows: int, feature: int) -> Array | None:
        table = array.reshape(rows, -1)
        return table[:, feature] if feature < table.shape[1] else None


Watch = ClassWatch | ValueWatch


@dataclass(slots=True)
class Plan:
    """What one loaded version watches in each batch's outputs and inputs.

    `update` only keeps a reference to a batch's inputs and outputs; `flush` counts everything
    kept with a few numpy calls per watched tensor. That amortises numpy's per-call cost over many
    small batches. Batches are held up to about FLUSH_BYTES of tensors, and the collector flushes
    before every scrape, so /metrics is exact.
    """

    batching: bool
    outputs: list[tuple[str, Watch]] = field(default_factory=list)
    inputs: list[tuple[str, Watch]] = field(default_factory=list)
    held: list[tuple[dict[str, Array], dict[str, Array], int]] = field(default_factory=list)
    held_rows: int = 0
    flush_rows: int = 1  # until a first flush has measured the bytes per row

    def update(self, inputs: dict[str, Array], outputs: dict[str, Array], rows: int) -> None:
        if not self.outputs and not self.inputs:
            return
        self.held.append((inputs, outputs, rows))
        self.held_rows += rows
        if self.held_rows >= self.flush_rows or len(self.held) >= FLUSH_BATCHES:
            self.flush()

    def flush(self) -> None:
        held = self.held
        if not held:
            return
        self.held = []
        self.held_rows = 0
        inputs, outputs, rows = held[0]
        held_bytes = sum(a.nbytes for a in inputs.values()) + sum(a.nbytes for a in outputs.values())
        self.flush_rows = max(1, min(FLUSH_ROWS, FLUSH_BYTES * max(1, rows) // max(1, held_bytes)))
        for name, watch in self.outputs:
            self._count(watch, [batch[1].get(name) for batch in held])
        for name, watch in self.inputs:
            self._count(watch, [batch[0].get(name) for batch in held])

    def inherit(self, previous: Plan) -> None:
        """Carry counts over from an earlier load of the same version where they match, so counters
        stay monotonic across a reload; drift windows start afresh with the new model."""
        before: dict[tuple[str, str, type], Watch] = {
            (side, name, type(watch)): watch
            for side, watches in (("output", previous.outputs), ("input", previous.inputs))
            for name, watch in watches
        }
        for side, watches in (("output", self.outputs), ("input", self.inputs)):
            for name, watch in watches:
                old = before.get((side, name, type(watch)))
                if isinstance(watch, ClassWatch) and isinstance(old, ClassWatch):
                    if watch.counts is not None and old.counts is not None and watch.classes == old.classes:
                        watch.counts += old.counts
                elif isinstance(watch, ValueWatch) and isinstance(old, ValueWatch):
                    for key, histogram in watch.histograms.items():
                        old_histogram = old.histograms.get(key)
                        if old_histogram is not None and old_histogram.bounds == histogram.bounds:
                            histogram.counts += old_histogram.counts
                            histogram.sum += old_histogram.sum

    def _count(self, watch: Watch, found: list[Array | None]) -> None:
        arrays = [array for array in found if array is not None]
        if not arrays:
            return
        try:
            if self.batching:
                combined = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
            else:
                combined = np.stack(arrays)  # one row per batch
        except ValueError:  # shapes differ (dynamic dims) or 0-d: one batch at a time
            for array in arrays:
                watch.update(array, (array.shape[0] if array.ndim else 1) if self.batching else 1)
            return
        watch.update(combined, combined.shape[0] if combined.ndim else 1)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What a plan is built from: copied off the ServedModel so no reference to it is kept."""

    name: str
    version: int
    model_dir: Path
    version_dir: Path
    batching: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    label_files: dict[str, str]

    @classmethod
    def of(cls, served: ServedModel) -> VersionInfo:
        return cls(
            name=served.name,
            version=served.version,
            model_dir=Path(served.model_dir),
            version_dir=Path(served.version_dir),
            batching=served.max_batch_size > 0,
            inputs=tuple(served.model_inputs),
            outputs=tuple(served.model_outputs),
            label_files={o.name: o.label_filename for o in served.config.output if o.label_filename},
        )


class MonitoringError(ValueError):
    """monitoring.json, reference.json or a label file is malformed; the message names the file."""


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MonitoringError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MonitoringError(f"{path}: must hold a JSON object")
    return doc


def _first_file(info: VersionInfo, filename: str) -> Path:
    """The version directory's file if it has one, else the model directory's."""
    in_version = info.version_dir / filename
    return in_version if in_version.is_file() else info.model_dir / filename


def _read_labels(info: VersionInfo, filename: str) -> list[str]:
    # The same rule as the load's (paths.inside): a name that leads outside is never opened.
    from runtime.errors import ModelLoadError
    from runtime.repository.paths import inside

    for base in (info.model_dir, info.version_dir):
        try:
            path = inside(base, filename, f"model {info.name!r}: label_filename")
        except ModelLoadError as exc:
            raise MonitoringError(exc.message) from None
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            while lines and not lines[-1].strip():
                lines.pop()
            return [line.strip() for line in lines[:MAX_CLASSES]]
    raise MonitoringError(
        f"model {info.name!r}: label_filename {filename!r} is in neither the model nor the version directory"
    )


def _class_names(count: int, labels: Sequence[str]) -> list[str]:
    """Label values for classes 0..count-1: the label where there is one, else the index; unique."""
    names: list[str] = []
    seen: set[str] = set()
    for index in range(count):
        name = labels[index] if index < len(labels) and labels[index] else str(index)
        if name in seen:
            name = f"{name}#{index}"
        seen.add(name)
        names.append(name)
    return names


def _row_shape(spec: TensorSpec, batching: bool) -> tuple[int, ...]:
    return spec.shape[1:] if batching else spec.shape


def _numeric(spec: TensorSpec) -> bool:
    return spec.datatype in {
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "FP16",
        "FP32",
        "FP64",
    }


def _auto_kind(spec: TensorSpec, batching: bool, labels: Sequence[str]) -> str:
    row = _row_shape(spec, batching)
    if not _numeric(spec) or any(d < 0 for d in row):
        return "off"
    if len(row) == 1 and spec.datatype.startswith("FP") and (2 <= row[0] <= AUTO_MAX_CLASSES or labels):
        return "class"
    if math.prod(row) <= AUTO_MAX_VALUES_PER_ROW:
        return "value"
    return "off"


def _mapping(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise MonitoringError(f"{where}: {key!r} must map tensor names to objects")
    return value


def _features(raw: Any, where: str) -> list[int] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in raw)
        or len(raw) > MAX_FEATURES
    ):
        raise MonitoringError(f"{where}: 'features' must be a list of at most {MAX_FEATURES} element indices")
    return sorted(set(raw))


def _drift_for_values(ref: dict[str, Any], where: str, window: int) -> tuple[Drift, Array, int | None]:
    edges = ref.get("edges")
    freqs = ref.get("frequencies")
    if not isinstance(edges, list) or not isinstance(freqs, list) or not edges:
        raise MonitoringError(f"{where}: a value reference needs 'edges' and 'frequencies' lists")
    try:
        bounds = np.asarray([float(e) for e in edges], dtype=np.float64)
        expected = np.asarray([float(f) for f in freqs], dtype=np.float64)
    except (TypeError, ValueError):
        raise MonitoringError(f"{where}: 'edges' and 'frequencies' must hold numbers") from None
    if not np.all(np.isfinite(bounds)) or np.any(np.diff(bounds) <= 0):
        raise MonitoringError(f"{where}: 'edges' must be finite and strictly increasing")
    if len(freqs) == len(edges) - 1:
        cuts = bounds[1:-1]  # numpy.histogram style: outer edges given, values beyond go to the end bins
    elif len(freqs) == len(edges) + 1:
        cuts = bounds  # interior cut points: bins (-inf, e0), [e0, e1), ..., [e_last, +inf)
    else:
        raise MonitoringError(
            f"{where}: {len(freqs)} frequencies for {len(edges)} edges; give len(edges) - 1 "
            "(numpy.histogram style) or len(edges) + 1 (edges as interior cut points)"
        )
    if np.any(expected < 0) or expected.sum() <= 0 or expected.size > MAX_BUCKETS + 1:
        raise MonitoringError(
            f"{where}: frequencies must be non-negative, not all zero, at most {MAX_BUCKETS + 1}"
        )
    feature = ref.get("feature")
    if feature is not None and (not isinstance(feature, int) or isinstance(feature, bool) or feature < 0):
        raise MonitoringError(f"{where}: 'feature' must be a non-negative element index")
    return Drift(expected, window), cuts, feature


def _drift_for_classes(ref: dict[str, Any], classes: list[str], where: str, window: int) -> Drift:
    raw = ref.get("classes")
    expected = np.zeros(len(classes), dtype=np.float64)
    if isinstance(raw, list) and len(raw) == len(classes):
        values = raw
    elif isinstance(raw, dict):
        values = [0.0] * len(classes)
        index_of = {name: i for i, name in enumerate(classes)}
        for key, value in raw.items():
            position = index_of.get(str(key))
            if position is None and str(key).isdigit() and int(key) < len(classes):
                position = int(key)
            if position is None:
                raise MonitoringError(f"{where}: class {key!r} is neither a label nor an index of the output")
            values[position] = value
    else:
        raise MonitoringError(
            f"{where}: 'classes' must list {len(classes)} frequencies or map labels/indices to frequencies"
        )
    try:
        expected[:] = [float(v) for v in values]
    except (TypeError, ValueError):
        raise MonitoringError(f"{where}: class frequencies must be numbers") from None
    if np.any(expected < 0) or expected.sum() <= 0:
        raise MonitoringError(f"{where}: class frequencies must be non-negative and not all zero")
    return Drift(expected, window)


def build_plan(info: VersionInfo, drift_window: int, predictions: bool = True) -> Plan:
    """Read monitoring.json, label files and reference.json for one version (blocking I/O)."""
    plan = Plan(batching=info.batching)
    settings_path = _first_file(info, MONITORING_FILE)
    settings = _read_json(settings_path) or {}
    where = str(settings_path)
    enabled = settings.get("predictions", True)
    if not isinstance(enabled, bool):
        raise MonitoringError(f"{where}: 'predictions' must be true or false")
    chosen = _mapping(settings, "outputs", where) if "outputs" in settings else None
    watched_inputs = _mapping(settings, "inputs", where)
    reference_path = _first_file(info, REFERENCE_FILE)
    reference = _read_json(reference_path) or {}
    ref_where = str(reference_path)
    ref_outputs = _mapping(reference, "outputs", ref_where)
    ref_inputs = _mapping(reference, "inputs", ref_where)
    max_classes = settings.get("max_classes", AUTO_MAX_CLASSES)
    if (
        not isinstance(max_classes, int)
        or isinstance(max_classes, bool)
        or not 2 <= max_classes <= MAX_CLASSES
    ):
        raise MonitoringError(f"{where}: 'max_classes' must be an integer in [2, {MAX_CLASSES}]")
    specs = {spec.name: spec for spec in info.outputs}
    for name in [*(chosen or {}), *ref_outputs]:
        if name not in specs:
            raise MonitoringError(
                f"{where if name in (chosen or {}) else ref_where}: model has no output {name!r}"
            )

    for spec in info.outputs:
        labels = _read_labels(info, info.label_files[spec.name]) if spec.name in info.label_files else []
        entry = (chosen or {}).get(spec.name, {})
        if chosen is not None and spec.name not in chosen:
            kind = "off"
        else:
            kind = str(entry.get("kind", "auto"))
        value_buckets = _bucket_setting(entry, where, spec.name)  # checked even where unused
        if kind not in ("auto", "class", "value", "off"):
            raise MonitoringError(f"{where}: output {spec.name!r}: kind must be auto, class, value or off")
        if kind == "auto":
            kind = _auto_kind(spec, info.batching, labels)
            row = _row_shape(spec, info.batching)
            if kind == "class" and len(row) == 1 and row[0] > max(max_classes, len(labels)):
                kind = "value"
        if not (predictions and enabled):
            kind = "off"
        row = _row_shape(spec, info.batching)
        ref = ref_outputs.get(spec.name)
        ref_is_class = ref is not None and "classes" in ref
        watch: Watch | None = None
        if kind == "class" or ref_is_class:
            if len(row) != 1 or row[0] < 2 or row[0] > MAX_CLASSES:
                raise MonitoringError(
                    f"output {spec.name!r} of shape {list(spec.shape)} cannot be counted by class "
                    f"(needs [batch, K] with 2 <= K <= {MAX_CLASSES})"
                )
            classes = _class_names(row[0], labels)
            drift = (
                _drift_for_classes(ref, classes, f"{ref_where}: output {spec.name!r}", drift_window)
                if ref is not None and ref_is_class
                else None
            )
            watch = ClassWatch(spec.name, classes, count=kind == "class", drift=drift)
            if kind == "value":
                plan.outputs.append((spec.name, ValueWatch(spec.name, value_buckets, None)))
        elif kind == "value" or ref is not None:
            if not _numeric(spec):
                raise MonitoringError(
                    f"output {spec.name!r} is {spec.datatype}: only numeric outputs have values"
                )
            buckets = value_buckets if kind == "value" else None
            drift, cuts, feature = (
                _drift_for_values(ref, f"{ref_where}: output {spec.name!r}", drift_window)
                if ref
                else (None, None, None)
            )
            watch = ValueWatch(spec.name, buckets, None, drift, cuts, feature)
        if watch is not None:
            plan.outputs.append((spec.name, watch))

    input_specs = {spec.name: spec for spec in info.inputs}
    for name in {*watched_inputs, *ref_inputs}:
        spec_or_none = input_specs.get(name)
        if spec_or_none is None:
            raise MonitoringError(
                f"{where if name in watched_inputs else ref_where}: model has no input {name!r}"
            )
        if not _numeric(spec_or_none):
            raise MonitoringError(
                f"input {name!r} is {spec_or_none.datatype}: only numeric inputs have statistics"
            )
        entry = watched_inputs.get(name)
        buckets = _bucket_setting(entry, where, name) if entry is not None and predictions else None
        features = _features(entry.get("features"), f"{where}: input {name!r}") if entry is not None else None
        ref = ref_inputs.get(name)
        drift, cuts, feature = (
            _drift_for_values(ref, f"{ref_where}: input {name!r}", drift_window)
            if ref
            else (None, None, None)
        )
        if buckets is not None or drift is not None:
            plan.inputs.append((name, ValueWatch(name, buckets, features, drift, cuts, feature)))
    plan.inputs.sort(key=lambda item: item[0])
    return plan


def _bucket_setting(entry: dict[str, Any] | None, where: str, tensor: str) -> tuple[float, ...]:
    raw = (entry or {}).get("buckets")
    if raw is None:
        return DEFAULT_VALUE_BUCKETS
    if not isinstance(raw, list):
        raise MonitoringError(f"{where}: {tensor!r}: 'buckets' must be a list of numbers")
    try:
        return parse_buckets(raw, f"{where}: {tensor!r}: buckets")
    except ValueError as exc:
        raise MonitoringError(str(exc)) from None


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
        self.owner: weakref.ref[ServedModel] | None = None  # the loaded model the plan was built for
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
        self._models: ModelRegistry | None = None
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

    def attach(self, models: ModelRegistry) -> None:
        """Know the registry: names it holds are label values, any other name is reported as model=""."""
        self._models = models

    # ---- Observer -----------------------------------------------------------------------------

    def request_started(self, request: InferRequest, model: ServedModel) -> None:
        """Optional hook: a request was admitted to `model` (feeds the in-flight gauge)."""
        if not self._record:
            return
        try:
            self._inflight_tracked = True
            self._series_for(model).inflight += 1
        except Exception:
            self._failed("request_started")

    def request_finished(
        self, request: InferRequest, model: ServedModel | None, outcome: str, seconds: float
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
        self, model: ServedModel, timing: BatchTiming, inputs: dict[str, Array], outputs: dict[str, Array]
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

    def _series_for(self, model: ServedModel) -> VersionSeries:
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
        model: ServedModel,
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

    def _start_plan(self, series: VersionSeries, model: ServedModel) -> None:
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

    def _plan_built(self, series: VersionSeries, owner: weakref.ref[ServedModel], plan: Plan) -> None:
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
        self, request: InferRequest, model: ServedModel | None, outcome: str, seconds: float
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


# ---- scrape-time collection -------------------------------------------------------------------


def _family(name: str) -> Any:
    info = EXPORTED[name]
    if info.kind == "counter":
        return CounterMetricFamily(name, info.help, labels=info.labels)
    if info.kind == "gauge":
        return GaugeMetricFamily(name, info.help, labels=info.labels)
    return HistogramMetricFamily(name, info.help, labels=info.labels)


def exposed_names() -> set[str]:
    """Every sample name /metrics can show: counters end in _total, histograms have _bucket/_sum/_count."""
    names = set(PROCESS_METRICS)
    for name, info in EXPORTED.items():
        if info.kind == "counter":
            names |= {f"{name}_total", f"{name}_created"}
        elif info.kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
        else:
            names.add(name)
    return names


class RuntimeCollector(Collector):
    """Model metrics at scrape time: the observer's series and the registry's state."""

    def __init__(self, models: ModelRegistry, observer: MetricsObserver | None = None) -> None:
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
            for candidate in ModelState:
                f[f"{PREFIX}_model_state"].add_metric(
                    [*key, candidate.value], 1.0 if record.state is candidate else 0.0
                )
            if record.load_seconds:
                f[f"{PREFIX}_model_load_duration_seconds"].add_metric(key, record.load_seconds)
            if record.served is not None:
                f[f"{PREFIX}_queue_depth"].add_metric(key, record.served.queue.stats.queued)
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
                live = owner is not None and owner.state is ModelState.READY
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
    models: ModelRegistry, observer: MetricsObserver | None = None, gpu: bool = True
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


def observer_for(settings: Any) -> MetricsObserver | None:
    """The observer the settings ask for: metrics on, or a request log to write; None when neither."""
    detail: Detail = getattr(settings, "metrics_detail", "full") if settings.allow_metrics else "off"
    if detail == "off" and not settings.request_log_sample_rate:
        return None
    return MetricsObserver.from_settings(settings, detail)


def build_app(registry: CollectorRegistry) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])

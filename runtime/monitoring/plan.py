"""Per-version monitoring plans: what one loaded version watches in each batch, read from its
`monitoring.json` (what to count), `reference.json` (drift references) and label files (see the
README's Monitoring section). `build_plan` does blocking I/O: the observer calls it off the event loop.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runtime.monitoring.drift import ClassWatch, Drift, ValueWatch, Watch
from runtime.monitoring.histograms import MAX_BUCKETS, parse_buckets
from runtime.types import Array, TensorSpec

MONITORING_FILE = "monitoring.json"
REFERENCE_FILE = "reference.json"

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
MAX_FEATURES = 64
FLUSH_BATCHES = 256  # batches counted together (see Plan) ...
FLUSH_ROWS = 4096  # ... or rows ...
FLUSH_BYTES = 4 * 1024 * 1024  # ... or bytes of tensors kept alive meanwhile


class PlannedModel(Protocol):
    """What a plan is built from (ServedModel has these): the monitoring package knows no ServedModel."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def model_dir(self) -> Path: ...

    @property
    def version_dir(self) -> Path: ...

    @property
    def max_batch_size(self) -> int: ...

    @property
    def model_inputs(self) -> Sequence[TensorSpec]: ...

    @property
    def model_outputs(self) -> Sequence[TensorSpec]: ...

    @property
    def labels(self) -> Mapping[str, Sequence[str]]: ...  # output -> its label_filename's lines, read at load


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
    """What a plan is built from: copied off the loaded model so no reference to it is kept."""

    name: str
    version: int
    model_dir: Path
    version_dir: Path
    batching: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: dict[str, tuple[str, ...]]  # output -> label lines (read once, at load)

    @classmethod
    def of(cls, served: PlannedModel) -> VersionInfo:
        return cls(
            name=served.name,
            version=served.version,
            model_dir=Path(served.model_dir),
            version_dir=Path(served.version_dir),
            batching=served.max_batch_size > 0,
            inputs=tuple(served.model_inputs),
            outputs=tuple(served.model_outputs),
            labels={name: tuple(lines) for name, lines in served.labels.items()},
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


def _class_labels(lines: Sequence[str]) -> list[str]:
    kept = list(lines)
    while kept and not kept[-1].strip():
        kept.pop()
    return [line.strip() for line in kept[:MAX_CLASSES]]


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
        labels = _class_labels(info.labels[spec.name]) if spec.name in info.labels else []
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


"""The metric catalogue: every family /metrics can export, its kind, help text and labels.

Label cardinality is bounded: unknown model names are reported as model="", classes, features
and buckets are capped (see plan.py), and every other label takes values from a fixed set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "model_runtime"

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
PROTOCOLS = frozenset({"http", "grpc"})
PHASES = ("input", "infer", "output")


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
        MetricInfo(f"{PREFIX}_cache_hits", "counter", "Requests answered from the response cache", _MV),
        MetricInfo(f"{PREFIX}_cache_misses", "counter", "Response-cache lookups that found no answer", _MV),
        MetricInfo(
            f"{PREFIX}_cache_duration_seconds",
            "counter",
            "Time in the response cache: key and lookup (result hit); key, lookup and insertion (result miss)",
            (*_MV, "result"),
        ),
        MetricInfo(f"{PREFIX}_queue_depth", "gauge", "Requests waiting in the queue", _MV),
        MetricInfo(
            f"{PREFIX}_inflight_requests",
            "gauge",
            "Requests admitted to the version and not yet answered",
            _MV,
        ),
        MetricInfo(f"{PREFIX}_live_sequences", "gauge", "Sequences started and not yet ended or released (sequence batching)", _MV),
        MetricInfo(f"{PREFIX}_sequence_starts", "counter", "Sequences started (sequence batching)", _MV),
        MetricInfo(f"{PREFIX}_sequence_ends", "counter", "Sequences ended by their end request (sequence batching)", _MV),
        MetricInfo(
            f"{PREFIX}_sequence_idle_releases",
            "counter",
            "Sequences released after max_sequence_idle_microseconds without a request (sequence batching)",
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

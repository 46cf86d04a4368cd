"""Triton's statistics extension, transport-free: which loaded versions a request names, and a snapshot
of each one's counters (runtime.model.ModelStats, Triton's field meanings) as plain values.

Only loaded versions are listed, as Triton does. runtime/server/stats.py writes them as JSON and protobuf.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

from runtime.errors import ModelNotFound, Unavailable
from runtime.model import Duration as Counter
from runtime.model import ServedModel
from runtime.repository.registry import ModelRegistry


@dataclass(frozen=True, slots=True)
class Duration:
    count: int = 0
    ns: int = 0


@dataclass(frozen=True, slots=True)
class BatchStatistics:
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True, slots=True)
class ModelStatistics:
    """One loaded version's counters at the moment they were read."""

    name: str
    version: str
    last_inference_ms: int
    inference_count: int  # rows
    execution_count: int  # batches
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    batch_stats: list[BatchStatistics]  # by batch size
    cache_hit: Duration = Duration()  # Triton's: lookups that hit (count, lookup time)
    cache_miss: Duration = Duration()  # lookups that missed (count, lookup and insertion time)


_Plain = TypeVar("_Plain", Duration, BatchStatistics, ModelStatistics)


def from_dict(kind: type[_Plain], doc: dict[str, Any]) -> _Plain:
    """The inverse of dataclasses.asdict for these snapshots (they cross the --workers hop as JSON): each
    field by its declared type, so a field added to the dataclasses needs no change here."""
    values: dict[str, Any] = {}
    for field in fields(kind):
        if field.name not in doc:
            continue  # a default (a field the sender does not know)
        value = doc[field.name]
        if field.type == "Duration":
            value = from_dict(Duration, value)
        elif field.type == "list[BatchStatistics]":
            value = [from_dict(BatchStatistics, item) for item in value]
        values[field.name] = value
    return kind(**values)


def select(registry: ModelRegistry, name: str = "", version: str = "") -> list[ServedModel]:
    """The loaded versions a statistics request names: all models, one model's versions, or one version."""
    if not name:
        return [
            record.served
            for entry in registry.entries()
            for _, record in sorted(entry.serving.items())
            if record.served is not None
        ]
    if version:
        record = registry.record(name, version)  # ModelNotFound for unknown models, versions and labels
        if record.served is None:
            raise Unavailable(
                f"model {name!r} version {version} is not loaded ({record.reason or record.state.value})"
            )
        return [record.served]
    entry = registry.entry(name)
    if entry is None:
        raise ModelNotFound(f"unknown model {name!r}")
    loaded = [record.served for _, record in sorted(entry.serving.items()) if record.served is not None]
    if not loaded:
        raise Unavailable(f"model {name!r} has no loaded version")
    return loaded


def snapshot(served: ServedModel) -> ModelStatistics:
    stats = served.stats

    def copy(counter: Counter) -> Duration:
        return Duration(counter.count, counter.ns)

    return ModelStatistics(
        name=served.name,
        version=str(served.version),
        last_inference_ms=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        success=copy(stats.success),
        fail=copy(stats.fail),
        queue=copy(stats.queue),
        compute_input=copy(stats.compute_input),
        compute_infer=copy(stats.compute_infer),
        compute_output=copy(stats.compute_output),
        cache_hit=copy(stats.cache_hit),
        cache_miss=copy(stats.cache_miss),
        batch_stats=[
            BatchStatistics(size, copy(per_size[0]), copy(per_size[1]), copy(per_size[2]))
            for size, per_size in sorted(stats.batch_stats.items())
        ],
    )


def statistics(registry: ModelRegistry, name: str = "", version: str = "") -> list[ModelStatistics]:
    return [snapshot(served) for served in select(registry, name, version)]

"""Histograms fed whole numpy arrays: Prometheus `le` buckets (ArrayHistogram) and a sliding window of bins (SlidingBins)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from runtime.types import Array

MAX_BUCKETS = 64


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


def go_float(value: float) -> str:
    """A bucket bound as prometheus_client's own histograms write `le` (its floatToGoString, a library
    internal, so kept here): Python's repr, but Go's exponent form for positive values from 1e+06 up."""
    value = float(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    # Go switches to exponents sooner than Python (only positive bounds matter for `le`).
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _cumulative(bounds: Sequence[float], counts: Iterable[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running = 0
    labels = [go_float(b) for b in bounds] + ["+Inf"]
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


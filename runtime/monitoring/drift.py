"""What is watched in one tensor: classes counted (ClassWatch), values bucketed (ValueWatch), and the
drift of either against a reference distribution (Drift: a sliding window and its population stability index)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.monitoring.histograms import ArrayHistogram, SlidingBins
from runtime.types import Array

PSI_EPSILON = 1e-4


def population_stability_index(expected: Array, actual: Array, epsilon: float = PSI_EPSILON) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins of two distributions; empty bins count as `epsilon`."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e = np.clip(e / e.sum(), epsilon, None)
    a = np.clip(a / a.sum(), epsilon, None)
    return float(np.sum((a - e) * np.log(a / e)))


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

"""runtime/monitoring/histograms.py: bucket bounds are written as prometheus_client's own histograms write `le`.

go_float replaces prometheus_client.utils.floatToGoString (a library internal); the reference here is
the library's public output: a prometheus_client Histogram with the same bounds, exposed by generate_latest.
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.monitoring.histograms import ArrayHistogram, go_float

BOUNDS = (-1e20, -12345678.0, -0.5, 0.0, 1e-07, 1e-05, 0.00025, 0.5, 1.0, 2.5, 100.0, 999999.0, 1234567.0, 1e7, 1.5e16, 1e300)


def prometheus_le(bounds: tuple[float, ...]) -> list[str]:
    registry = CollectorRegistry()
    Histogram("h", "reference", buckets=bounds, registry=registry).observe(0.0)
    text = generate_latest(registry).decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "h"]
    return [s.labels["le"] for s in family.samples if s.name == "h_bucket"]


def test_bounds_are_written_as_prometheus_client_writes_them() -> None:
    assert [go_float(b) for b in BOUNDS] + ["+Inf"] == prometheus_le(BOUNDS)
    assert [go_float(v) for v in (math.inf, -math.inf, math.nan)] == ["+Inf", "-Inf", "NaN"]


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=8, unique=True))
def test_any_finite_bounds_match_prometheus_client(values: list[float]) -> None:
    bounds = tuple(sorted({0.0 if v == 0 else v for v in values}))
    assert [go_float(b) for b in bounds] + ["+Inf"] == prometheus_le(bounds)


def test_array_histogram_buckets_are_cumulative_with_le_semantics() -> None:
    histogram = ArrayHistogram((1.0, 2.0))
    histogram.observe_array(np.array([0.5, 1.0, 1.5, 2.0, 3.0, np.nan]))
    assert histogram.buckets() == [("1.0", 2), ("2.0", 4), ("+Inf", 5)]
    assert histogram.sum == 8.0

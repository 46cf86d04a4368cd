"""Read a Prometheus text exposition into samples that tests can look up by name and labels."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


class Samples:
    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {family.name: family.type for family in text_string_to_metric_families(text)}
        self.rows: list[tuple[str, dict[str, str], float]] = [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def names(self) -> set[str]:
        return {name for name, _, _ in self.rows}

    def matching(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """Samples of `name` whose labels include every given label."""
        return [
            (sample_labels, value)
            for sample_name, sample_labels, value in self.rows
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample of `name` with exactly these labels (le included for buckets), or None."""
        found = [
            value
            for sample_name, sample_labels, value in self.rows
            if sample_name == name and sample_labels == labels
        ]
        assert len(found) <= 1, f"{len(found)} samples of {name} with labels {labels}"
        return found[0] if found else None

    def total(self, name: str, **labels: str) -> float:
        return sum(value for _, value in self.matching(name, **labels))

    def buckets(self, name: str, **labels: str) -> dict[str, float]:
        """le -> cumulative count of one histogram series."""
        return {
            sample_labels["le"]: value
            for sample_labels, value in self.matching(f"{name}_bucket", **labels)
            if {k: v for k, v in sample_labels.items() if k != "le"} == labels
        }


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Samples(response.read().decode())


def eventually(probe: Callable[[], T | None], timeout_s: float = 10.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)

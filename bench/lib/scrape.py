"""Reading a running server's counters: the statistics extension, else its Prometheus text."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.serving import RunningServer


METRIC_LINE = re.compile(r"^(model_runtime_(?:inference_rows|executions))(?:_total)?\{([^}]*)\}\s+(\S+)$")


def fetch(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


def read_counters(server: RunningServer, model: str) -> tuple[float, float] | None:
    """(rows inferred, executions) of `model` so far; None if the server exposes neither source."""
    try:
        stats = json.loads(fetch(f"http://{server.http_url}/v2/models/{model}/stats"))
        entries = stats.get("model_stats", [])
        if entries:
            rows = sum(float(entry.get("inference_count", 0)) for entry in entries)
            executions = sum(float(entry.get("execution_count", 0)) for entry in entries)
            return rows, executions
    except (urllib.error.URLError, ValueError, OSError):
        pass  # no statistics extension (yet): fall back to Prometheus
    try:
        text = fetch(server.metrics_url).decode()
    except (urllib.error.URLError, OSError):
        return None
    totals = {"model_runtime_inference_rows": 0.0, "model_runtime_executions": 0.0}
    found = False
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match and f'model="{model}"' in match.group(2):
            totals[match.group(1)] += float(match.group(3))
            found = True
    if not found:
        return None
    return totals["model_runtime_inference_rows"], totals["model_runtime_executions"]


def average_batch(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    if before is None or after is None:
        return None
    rows, executions = after[0] - before[0], after[1] - before[1]
    return rows / executions if executions > 0 else None

"""Triton's perf_analyzer: install it, build its command line per transport, read its CSV report."""

from __future__ import annotations

import csv
import subprocess
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]


JSON_TENSORS = ["--input-tensor-format", "json", "--output-tensor-format", "json"]
STABILITY_ERROR = 2  # perf_analyzer's exit code when no window set met --stability-percentage


@dataclass(frozen=True)
class Transport:
    label: str  # grpc, http-binary, http-json
    protocol: str  # perf_analyzer -i
    tensor_format: str  # binary, json
    flags: tuple[str, ...] = ()


GRPC = Transport("grpc", "grpc", "binary")
HTTP_BINARY = Transport("http-binary", "http", "binary")
HTTP_JSON = Transport("http-json", "http", "json", tuple(JSON_TENSORS))


def install_perf_analyzer() -> Path:
    completed = subprocess.run(
        ["bash", str(BENCH_DIR / "install_perf_analyzer.sh")], check=True, capture_output=True, text=True
    )
    return Path(completed.stdout.strip().splitlines()[-1])


def perf_analyzer_command(
    binary: Path,
    model: str,
    url: str,
    transport: Transport,
    concurrency: int,
    window_ms: int,
    stability_pct: int,
    max_trials: int,
    report: Path,
) -> list[str]:
    return [
        str(binary), "-m", model, "-u", url, "-i", transport.protocol,
        "--concurrency-range", str(concurrency),
        "--measurement-interval", str(window_ms),
        "--stability-percentage", str(stability_pct),
        "--max-trials", str(max_trials),
        "-f", str(report), *transport.flags,
    ]  # fmt: skip


def read_last_row(report: Path) -> dict[str, float]:
    with report.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: float(value) for key, value in rows[-1].items() if value not in (None, "")}

"""What tracing costs per request: off, on at 1% and at 100% sampling, against the same engine without it.

    python bench/bench_tracing.py [--rounds 4] [--round-seconds 2] [--concurrency 8] [--out bench/RESULTS.md]

In one process, no network on the request path: each configuration gets its own registry and Engine
over the example `mlp` (1 row per request, dynamic batching), and N tasks call `engine.infer` back to
back. Every configuration keeps the default metrics observer. Configurations:

    none       no --trace-otlp-endpoint: the data path as without tracing (the baseline)
    off        tracing configured, --trace-level off: the TracingObserver's one-flag check per call
    rate100    --trace-rate 100 (1%)
    rate1      --trace-rate 1 (100%): four spans per request plus one per batch

Spans go through the SDK's BatchSpanProcessor and the real OTLP/gRPC exporter to a receiver in a
process of its own (tests/tracing/collector.py), so export costs this process what it costs a server.
Rounds alternate between configurations so that load from other processes hits them alike (each
round's spans are flushed before the next round starts); the median round counts. A second figure times the observer calls alone (request_started,
request_finished and a share of batch_executed, per request, batches of 8 one-row requests), less
sensitive to a noisy machine. The section between `<!-- bench_tracing.py:begin -->` and `:end -->`
in `--out` is replaced with the command, the machine and the table.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from lib.machine import busy_warning, codec_line, cpu_model, load_average, memory_gib, source_revision
from lib.report import fmt, write_section
from bench_metrics_overhead import run_round  # the same load: 8 callers, 1-row mlp requests back to back

from runtime.config import Settings
from runtime.engine import Engine
from runtime.examples import write_example_repository
from runtime.monitoring.observer import BatchTiming, MetricsObserver, Observer
from runtime.repository.registry import ModelRegistry
from runtime.repository.store import RepositoryStore
from runtime.tracing import Tracing, start_tracing
from runtime.types import InferRequest

BEGIN = "<!-- bench_tracing.py:begin -->"
END = "<!-- bench_tracing.py:end -->"
HEADING = "Tracing overhead (bench/bench_tracing.py)"
CONFIGS = {"none": None, "off": ("off", 1), "rate100": ("timestamps", 100), "rate1": ("timestamps", 1)}


def otel_version() -> str:
    return importlib.metadata.version("opentelemetry-sdk")


def tracing_for(config: str, endpoint: str, metrics: MetricsObserver) -> Tracing | None:
    choice = CONFIGS[config]
    if choice is None:
        return None
    level, rate = choice
    settings = SimpleNamespace(trace_otlp_endpoint=endpoint, trace_otlp_protocol="grpc", trace_level=level, trace_rate=rate)
    return start_tracing(settings, metrics)


async def setup(root: Path, config: str, endpoint: str) -> tuple[Engine, Observer, Tracing | None]:
    metrics = MetricsObserver()
    tracing = tracing_for(config, endpoint, metrics)
    observer: Observer = (tracing.wrap(metrics) or metrics) if tracing is not None else metrics
    registry = ModelRegistry(RepositoryStore(root), Settings(model_repository=root, intra_op_threads=1), observer=observer)
    await registry.load_model("mlp")
    return Engine(registry, observer), observer, tracing


def observer_cost_us(observer: Observer, served: Any, batch_rows: int, repeats: int) -> float:
    """Microseconds of observer work per request, for batches of `batch_rows` one-row requests."""
    rng = np.random.default_rng(1)
    inputs = {"INPUT": rng.standard_normal((batch_rows, 16)).astype(np.float32)}
    outputs = {"PROBABILITIES": rng.random((batch_rows, 4)).astype(np.float32)}
    best = float("inf")
    for _ in range(5):  # the best of five: other processes only ever add time
        started = time.perf_counter()
        for _ in range(repeats):
            requests = [InferRequest("mlp", "", {}, protocol="http") for _ in range(batch_rows)]
            for request in requests:
                observer.request_started(request, served)
            timing = BatchTiming(batch_rows, [1e-4] * batch_rows, 2e-5, 3e-4, 1e-5, traces=[r.trace for r in requests])
            observer.batch_executed(served, timing, inputs, outputs)
            for request in requests:
                observer.request_finished(request, served, "success", 1e-3)
        best = min(best, (time.perf_counter() - started) / (repeats * batch_rows) * 1e6)
    return best


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def dropping_observer(config: str) -> Observer:
    """The configuration's observers with spans made and then dropped: the SDK's cost without OTLP encoding."""
    metrics = MetricsObserver()
    choice = CONFIGS[config]
    if choice is None:
        return metrics
    level, rate = choice
    tracing = start_tracing(SimpleNamespace(trace_level=level, trace_rate=rate), metrics, exporter=_Drop())
    return tracing.wrap(metrics) or metrics


def flush(tracing: Tracing | None) -> None:
    if tracing is not None and tracing.provider is not None:
        tracing.provider.force_flush()


async def measure(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_example_repository(Path(tmp) / "repo")
        engines = {config: await setup(root, config, endpoint) for config in CONFIGS}
        rng = np.random.default_rng(0)
        for engine, _, _ in engines.values():
            await run_round(engine, args.concurrency, 0.3, rng)
        rounds: dict[str, list[float]] = {config: [] for config in CONFIGS}
        for _ in range(args.rounds):
            for config in CONFIGS:
                rounds[config].append(await run_round(engines[config][0], args.concurrency, args.round_seconds, rng))
                flush(engines[config][2])  # export this round's spans now, not during the next round
        micro: dict[str, float] = {}
        sdk_only: dict[str, float] = {}
        for config, (engine, observer, tracing) in engines.items():
            served = engine.registry.get("mlp")
            micro[config] = observer_cost_us(observer, served, 8, max(1, args.micro_requests // 8))
            flush(tracing)
            dropping = dropping_observer(config)
            sdk_only[config] = observer_cost_us(dropping, served, 8, max(1, args.micro_requests // 8))
        for engine, _, tracing in engines.values():
            await engine.registry.close()
            if tracing is not None:
                tracing.close()
        return {"rounds": rounds, "micro_us": micro, "sdk_only_us": sdk_only}


def markdown(result: dict[str, Any], command: str, args: argparse.Namespace, spans: int, load_before: str) -> str:
    median = {config: statistics.median(values) for config, values in result["rounds"].items()}
    base_us = 1e6 / median["none"]
    lines = [
        f"Command: `{command}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC). {load_before}",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, {memory_gib()} RAM; Python {platform.python_version()}",
        f"- model-runtime: {codec_line()}; source {source_revision()}; opentelemetry-sdk {otel_version()}",
        *busy_warning(load_before.split(": ", 1)[-1]),
        "",
        f"In-process engine, example `mlp`, 1 row per request, {args.concurrency} concurrent callers, "
        f"{args.rounds} rounds of {args.round_seconds:g} s per configuration (alternating; median shown), the "
        "default metrics observer in every configuration. Spans: BatchSpanProcessor and the OTLP/gRPC exporter "
        f"to a receiver in another process ({spans} spans received in all). The observer columns time "
        "request_started + request_finished + 1/8 of batch_executed per request (batches of 8; best of 5), with the "
        "OTLP export running behind it, and again with the spans dropped by a no-op exporter (the SDK's cost alone). "
        "The receiver decodes on the same cores.",
        "",
        "| configuration | requests/s | us per request | added us per request | vs none | observer us per request | same, spans dropped | rounds (requests/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "none": "no tracing (no --trace-otlp-endpoint)",
        "off": "configured, trace level off",
        "rate100": "on, 1% (--trace-rate 100)",
        "rate1": "on, 100% (--trace-rate 1)",
    }
    for config, rate in median.items():
        us = 1e6 / rate
        lines.append(
            f"| {labels[config]} | {fmt(rate)} | {fmt(us, 1)} | {fmt(us - base_us, 1)} | {fmt(rate / median['none'], 3)}x | "
            f"{fmt(result['micro_us'][config], 2)} | {fmt(result['sdk_only_us'][config], 2)} | "
            f"{', '.join(fmt(v) for v in result['rounds'][config])} |"
        )
    lines += ["", f"Load after the run: {load_average()}."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per configuration (default 4)")
    parser.add_argument("--round-seconds", type=float, default=2.0, help="seconds per round (default 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent callers (default 8)")
    parser.add_argument("--micro-requests", type=int, default=8000, help="requests in each observer timing, of 5 (default 8000)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md", help="results file (default bench/RESULTS.md)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    command = "python bench/bench_tracing.py " + shlex.join(sys.argv[1:])
    load_before = f"Load before the run: {load_average()}"
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tests.tracing.collector"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None and receiver.stdin is not None
    endpoint = receiver.stdout.readline().strip()
    try:
        try:
            import uvloop

            result = uvloop.run(measure(args, endpoint))
        except ImportError:
            result = asyncio.run(measure(args, endpoint))
    finally:
        receiver.stdin.close()
        spans = int(receiver.stdout.readline().strip() or 0)
        receiver.wait(10)
    section = markdown(result, command.strip(), args, spans, load_before)
    write_section(args.out, section, BEGIN, END, HEADING)
    print(section)


if __name__ == "__main__":
    main()

"""What metrics cost: engine-level throughput with metrics off, basic and full, in one process.

    python bench/bench_metrics_overhead.py [--rounds 4] [--round-seconds 2] [--concurrency 8] [--json]

No network: each configuration gets its own registry and Engine over the example `mlp` (1 row per
request, dynamic batching), and N tasks call `engine.infer` back to back. Configurations:

    off    NullObserver (what --allow-metrics false gives)
    basic  MetricsObserver(detail="basic"): request counters, latency/queue/compute/batch histograms
    full   MetricsObserver(detail="full"), the default: basic plus the predicted-class counters
    drift  full, and the model ships a monitoring.json (histograms of 4 input features) and a
           reference.json (class drift and input drift): every optional statistic on

Rounds alternate between configurations (off, basic, full, off, ...) so that load from other
processes hits them alike; the median round counts. A second figure, less sensitive to a noisy
machine, times the observer calls alone: microseconds per request of request_finished plus a
share of batch_executed (with its prediction statistics), as a share of a metrics-off request.
Total run time is about rounds x configurations x round-seconds + ~5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import generate_latest

from runtime import monitoring as metrics
from runtime.config import Settings
from runtime.engine import Engine
from runtime.examples import write_example_repository
from runtime.monitoring.observer import BatchTiming, Observer
from runtime.repository.registry import ModelRegistry
from runtime.repository.store import RepositoryStore
from runtime.types import InferRequest

CONFIGS = ("off", "basic", "full", "drift")


def write_repository(root: Path, extras: bool) -> Path:
    write_example_repository(root)
    if not extras:
        return root
    mlp = root / "mlp"
    (mlp / "monitoring.json").write_text(json.dumps({"inputs": {"INPUT": {"features": [0, 1, 2, 3]}}}))
    (mlp / "reference.json").write_text(
        json.dumps(
            {
                "outputs": {"PROBABILITIES": {"classes": [0.25, 0.25, 0.25, 0.25]}},
                "inputs": {"INPUT": {"edges": [-2, -1, 0, 1, 2], "frequencies": [0.15, 0.35, 0.35, 0.15]}},
            }
        )
    )
    return root


async def setup(root: Path, config: str) -> tuple[Engine, metrics.MetricsObserver | None, Any]:
    observer: metrics.MetricsObserver | None = None
    if config != "off":
        observer = metrics.MetricsObserver(detail="basic" if config == "basic" else "full", drift_window=1000)
    settings = Settings(model_repository=root, intra_op_threads=1)
    registry = ModelRegistry(RepositoryStore(root), settings, observer=observer)
    await registry.load_model("mlp")
    scrape = metrics.build_registry(registry, observer, gpu=False)
    return Engine(registry, observer), observer, scrape


async def run_round(engine: Engine, concurrency: int, seconds: float, rng: np.random.Generator) -> float:
    rows = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(64)]
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop:
            await engine.infer(InferRequest("mlp", "", {"INPUT": rows[i % 64]}, protocol="http"))
            done += 1
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done / (time.perf_counter() - started)


def observer_cost_us(observer: Observer, served: Any, batch_rows: int, repeats: int) -> float:
    """Microseconds of observer work per request, for batches of `batch_rows` one-row requests."""
    rng = np.random.default_rng(1)
    inputs = {"INPUT": rng.standard_normal((batch_rows, 16)).astype(np.float32)}
    outputs = {"PROBABILITIES": rng.random((batch_rows, 4)).astype(np.float32)}
    timing = BatchTiming(batch_rows, [1e-4] * batch_rows, 2e-5, 3e-4, 1e-5)
    request = InferRequest("mlp", "", inputs, protocol="http")
    started = time.perf_counter()
    for _ in range(repeats):
        observer.batch_executed(served, timing, inputs, outputs)
        for _ in range(batch_rows):
            observer.request_finished(request, served, "success", 1e-3)
    return (time.perf_counter() - started) / (repeats * batch_rows) * 1e6


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        plain = write_repository(Path(tmp) / "plain", extras=False)
        extras = write_repository(Path(tmp) / "extras", extras=True)
        engines = {config: await setup(extras if config == "drift" else plain, config) for config in CONFIGS}
        rng = np.random.default_rng(0)
        for engine, _, _ in engines.values():  # warm up: sessions, plans read from disk
            await run_round(engine, args.concurrency, 0.3, rng)
        for _, observer, _ in engines.values():
            if observer is not None:
                await observer.settled()
        rounds: dict[str, list[float]] = {config: [] for config in CONFIGS}
        for _ in range(args.rounds):
            for config in CONFIGS:
                rounds[config].append(
                    await run_round(engines[config][0], args.concurrency, args.round_seconds, rng)
                )
        median = {config: statistics.median(values) for config, values in rounds.items()}
        result: dict[str, Any] = {
            "requests_per_s": {c: round(v, 1) for c, v in median.items()},
            "rounds": {c: [round(v, 1) for v in values] for c, values in rounds.items()},
            "overhead_pct": {
                c: round(100 * (median["off"] - median[c]) / median["off"], 2) for c in CONFIGS if c != "off"
            },
        }
        request_us = 1e6 / median["off"]
        result["request_us_metrics_off"] = round(request_us, 1)
        for rows in args.batch_rows:
            costs: dict[str, float] = {}
            for config in CONFIGS[1:]:
                engine, observer, _ = engines[config]
                assert observer is not None
                served = engine.registry.get("mlp")
                costs[config] = round(
                    observer_cost_us(observer, served, rows, max(1, args.micro_requests // rows)), 2
                )
            result[f"observer_us_per_request_batch{rows}"] = costs
            result[f"observer_share_pct_batch{rows}"] = {
                c: round(100 * us / request_us, 2) for c, us in costs.items()
            }
        full_scrape = engines["drift"][2]
        started = time.perf_counter()
        text = generate_latest(full_scrape)
        result["scrape_ms"] = round((time.perf_counter() - started) * 1e3, 2)
        result["scrape_bytes"] = len(text)
        for engine, _, _ in engines.values():
            await engine.registry.close()
        return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per configuration (default 4)")
    parser.add_argument("--round-seconds", type=float, default=2.0, help="seconds per round (default 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent callers (default 8)")
    parser.add_argument(
        "--batch-rows",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 8],
        help="one-row requests per batch in the observer timing, comma-separated (default 1,8)",
    )
    parser.add_argument(
        "--micro-requests", type=int, default=40000, help="requests in each observer timing (default 40000)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    try:
        import uvloop

        outcome = uvloop.run(main(arguments))
    except ImportError:
        outcome = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps(outcome))
    else:
        for key, value in outcome.items():
            print(f"{key:32} {value}")

"""The engine process's CPU per request over the hop, without any transport: issue 13's 50 us target.

It starts a real engine process (`python -m runtime _engine`, as the supervisor does) on the built-in
examples, connects `--links` front-end links to it from this process (runtime.frontend.connect: the
same slabs, channel and RemoteEngine the front ends use) and keeps `--concurrency` batch-1 requests
to the example `mlp` in flight, spread over the links. The engine's utime + stime (/proc/<pid>/stat)
over the run, divided by the requests, is its CPU per request; rows per execution come from the
statistics extension.

The baseline, measured in the same run: the same requests through an in-process Engine (no hop),
whose CPU per request is what the core itself costs.

    python bench/bench_engine_hop.py                       # prints; --markdown for a table row
    python bench/bench_engine_hop.py --concurrency 1 32 --requests 20000
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.config import Settings, settings_to_json  # noqa: E402
from runtime.supervisor import CHILD_SETTINGS_ENV, PARENT_PID_ENV, encode_address  # noqa: E402
from runtime.types import InferRequest  # noqa: E402

MODEL = "mlp"
CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S


@dataclass
class Result:
    label: str
    concurrency: int
    requests: int
    cpu_us: float
    per_s: float
    rows_per_execution: float


async def drive(engines: list, input_name: str, concurrency: int, total: int) -> tuple[int, float]:
    """`concurrency` loops, each on one link (round robin), until `total` requests are answered."""
    x = np.ones((1, 16), np.float32)
    done = 0

    async def client(engine) -> None:
        nonlocal done
        while done < total:
            response = await engine.infer(InferRequest(model_name=MODEL, model_version="", inputs={input_name: x}))
            response.release()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(engines[i % len(engines)]) for i in range(concurrency)))
    return done, time.perf_counter() - started


async def counts(engine) -> tuple[int, int]:
    stats = (await engine.statistics(MODEL))[0]
    return stats.inference_count, stats.execution_count


async def over_the_hop(settings: Settings, links: int, concurrencies: list[int], total: int) -> list[Result]:
    from runtime.frontend import connect

    address = f"\0bench-engine-hop-{os.getpid()}"
    env = {**os.environ, CHILD_SETTINGS_ENV: settings_to_json(settings), PARENT_PID_ENV: str(os.getpid())}
    engine_process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "_engine", "--engine-address", encode_address(address)],
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    results: list[Result] = []
    try:
        assert engine_process.stdout is not None
        line = b""
        while not line.startswith(b"READY"):  # onnxruntime may print to stdout first
            line = await asyncio.to_thread(engine_process.stdout.readline)
            if not line:
                raise RuntimeError("the engine process exited before it was ready")
        connections = [await connect(settings, address, index) for index in range(links)]
        engines = [c.engine for c in connections]
        input_name = (await engines[0].model_metadata(MODEL)).inputs[0].name
        await drive(engines, input_name, 8, 2000)  # warm-up
        for concurrency in concurrencies:
            before_counts = await counts(engines[0])
            before = cpu_s(engine_process.pid)
            done, wall = await drive(engines, input_name, concurrency, total)
            spent = cpu_s(engine_process.pid) - before
            after_counts = await counts(engines[0])
            executions = max(1, after_counts[1] - before_counts[1])
            results.append(
                Result(f"engine process, {links} links", concurrency, done, 1e6 * spent / done, done / wall,
                       (after_counts[0] - before_counts[0]) / executions)
            )  # fmt: skip
        for connection in connections:
            await connection.close()
    finally:
        engine_process.terminate()
        engine_process.wait(30)
    return results


async def in_process(settings: Settings, concurrencies: list[int], total: int) -> list[Result]:
    from runtime.app import start_core

    core = await start_core(settings)
    results: list[Result] = []
    try:
        input_name = (await core.engine.model_metadata(MODEL)).inputs[0].name

        await drive([core.engine], input_name, 8, 2000)
        for concurrency in concurrencies:
            before_counts = await counts(core.engine)
            before = time.process_time()
            done, wall = await drive([core.engine], input_name, concurrency, total)
            spent = time.process_time() - before
            after_counts = await counts(core.engine)
            executions = max(1, after_counts[1] - before_counts[1])
            results.append(
                Result("in-process Engine (no hop)", concurrency, done, 1e6 * spent / done, done / wall,
                       (after_counts[0] - before_counts[0]) / executions)
            )  # fmt: skip
    finally:
        await core.registry.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--links", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    import uvloop

    with tempfile.TemporaryDirectory(prefix="engine-hop-") as tmp:
        settings = Settings(example_repository=Path(tmp) / "examples", log_level="warning")
        baseline = uvloop.run(in_process(settings, args.concurrency, args.requests))
        hop = uvloop.run(over_the_hop(settings, args.links, args.concurrency, args.requests))
    if args.markdown:
        print("| path | concurrency | requests | engine CPU us/req | vs no hop | req/s | rows/execution |")
        print("|---|---:|---:|---:|---:|---:|---:|")
    for row in [*baseline, *hop]:
        base = next(b for b in baseline if b.concurrency == row.concurrency)
        ratio = row.cpu_us / base.cpu_us
        if args.markdown:
            print(f"| {row.label} | {row.concurrency} | {row.requests:,} | {row.cpu_us:.1f} | {ratio:.2f}x | "
                  f"{row.per_s:,.0f} | {row.rows_per_execution:.1f} |")  # fmt: skip
        else:
            print(f"{row.label:32} c{row.concurrency:<3} {row.cpu_us:7.1f} us CPU/req ({ratio:.2f}x no hop), "
                  f"{row.per_s:9,.0f} req/s, {row.rows_per_execution:5.1f} rows/execution")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The engine process's CPU per request over the hop, without any transport: issue 13's 50 us target.

It starts a real engine process (`python -m runtime _engine`, as the supervisor does) on the built-in
examples, connects `--links` front-end links to it from this process (runtime.frontend.connect: the
same slabs, channel and RemoteEngine the front ends use) and keeps `--concurrency` batch-1 requests
to the example `mlp` in flight, spread over the links. The engine's utime + stime (/proc/<pid>/stat)
over the run, divided by the requests, is its CPU per request; rows per execution come from the
statistics extension.

The baseline, measured in the same run: the same requests through an in-process Engine (no hop),
whose CPU per request is what the core itself costs.

    python bench/bench_engine_hop.py                       # prints
    python bench/bench_engine_hop.py --runs 3 --out bench/RESULTS.md
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


BEGIN_MARKER = "<!-- engine-hop:begin -->"
END_MARKER = "<!-- engine-hop:end -->"
HEADING = "The engine process's CPU per request over the hop (bench/bench_engine_hop.py, issue 13)"


def markdown(rows: list[tuple[int, Result, Result]], command: str) -> str:
    from lib.machine import machine_lines
    from lib.perf_analyzer import install_perf_analyzer

    lines = [
        f"_Written by `bench/bench_engine_hop.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._",
        "", "```sh", command, "```", "", *machine_lines(install_perf_analyzer(), 1), "",
        "Example `mlp`, batch-1 requests, closed loop, no transport: a real engine process driven through "
        "RemoteEngine links (the front ends' slabs and channel) from one driver process, against an in-process "
        "Engine in the same run (the baseline: what the core costs without the hop). CPU: the engine process's "
        "utime + stime per request (/proc), and this process's for the in-process baseline.",
        "",
        "| run | concurrency | in-process us/req | rows/exec | engine process us/req | rows/exec | req/s | vs in-process |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for run, base, hop in rows:
        lines.append(
            f"| {run} | {hop.concurrency} | {base.cpu_us:.1f} | {base.rows_per_execution:.1f} | {hop.cpu_us:.1f} | "
            f"{hop.rows_per_execution:.1f} | {hop.per_s:,.0f} | {hop.cpu_us / base.cpu_us:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 32])
    parser.add_argument("--links", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=1, help="repeat the pair this many times (the spread shows)")
    parser.add_argument("--out", type=Path, default=None, help="write this section of RESULTS.md (e.g. bench/RESULTS.md)")
    args = parser.parse_args()
    import uvloop

    rows: list[tuple[int, Result, Result]] = []
    with tempfile.TemporaryDirectory(prefix="engine-hop-") as tmp:
        settings = Settings(example_repository=Path(tmp) / "examples", log_level="warning")
        for run in range(1, args.runs + 1):
            baseline = uvloop.run(in_process(settings, args.concurrency, args.requests))
            hop = uvloop.run(over_the_hop(settings, args.links, args.concurrency, args.requests))
            for row in hop:
                base = next(b for b in baseline if b.concurrency == row.concurrency)
                rows.append((run, base, row))
                print(
                    f"run {run} c{row.concurrency:<3} in-process {base.cpu_us:7.1f} us/req ({base.rows_per_execution:4.1f} rows/exec); "
                    f"engine process {row.cpu_us:7.1f} us/req ({row.rows_per_execution:4.1f} rows/exec, {row.per_s:,.0f} req/s): "
                    f"{row.cpu_us / base.cpu_us:.2f}x",
                    flush=True,
                )  # fmt: skip
    if args.out is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from lib.report import write_section

        command = "python bench/bench_engine_hop.py " + " ".join(sys.argv[1:])
        write_section(args.out, markdown(rows, command.strip()), BEGIN_MARKER, END_MARKER, HEADING)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

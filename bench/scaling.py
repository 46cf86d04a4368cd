"""--workers scaling: where each request's CPU goes (engine vs front ends) and what more cores would buy.

For --workers 1, 2 and 3 it starts the server on the built-in examples, drives the example `mlp`
with perf_analyzer (batch-1 requests, binary tensors) over gRPC and HTTP at concurrency 1 and 32,
and reads each process's CPU time from /proc/<pid>/stat before and after every run. Requests are
counted by the server's statistics extension over the same interval, so CPU per request is exact
(warm-up included on both sides). perf_analyzer gets TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=1:
one gRPC connection per concurrent context, so SO_REUSEPORT can spread them over the front ends.

Prediction for C cores (the load generator elsewhere), from the c32 figures with --workers 2:
    infer/s(C) = min(1e6 / engine_us, (C - 1) * 1e6 / frontend_us)
the engine process is one event loop (one core at most for a model this small), the front ends get
the other C - 1 cores and scale linearly (they share nothing but the engine).

    python bench/scaling.py                 # ~2.5 minutes; rewrites its section of bench/RESULTS.md
    python bench/scaling.py --out /tmp/r.md --window-ms 1000
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # tests/serving.py
sys.path.insert(0, str(BENCH_DIR))

from tests.serving import RunningServer, start_server  # noqa: E402

MODEL = "mlp"
BEGIN_MARKER = "<!-- scaling:begin -->"
END_MARKER = "<!-- scaling:end -->"
HEADING = "Process model: --workers scaling (bench/scaling.py)"
CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
TRANSPORTS = ("grpc", "http")
CONCURRENCIES = (1, 32)
PREDICT_CORES = (8, 16, 32)


def cpu_s(pid: int) -> float:
    """utime + stime of `pid` from /proc/<pid>/stat, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK_S


def served_and_executions(server: RunningServer) -> tuple[int, int]:
    """inference_count and execution_count of MODEL (bench/lib/scrape.py: the statistics extension)."""
    from lib.scrape import read_counters

    counters = read_counters(server, MODEL)
    if counters is None:
        raise RuntimeError(f"the server reports no counters for {MODEL!r}")
    return int(counters[0]), int(counters[1])


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of `pid` (/proc/<pid>/status): a voluntary
    one is a sleep in epoll or a lock, i.e. one wake-up; an involuntary one is a preemption."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["voluntary_ctxt_switches"]), int(fields["nonvoluntary_ctxt_switches"])


@dataclass
class Row:
    workers: int
    transport: str
    concurrency: int
    infer_per_s: float
    p50_us: float
    p99_us: float
    engine_us: float | None  # None with --workers 1: one process does everything
    frontend_us: float
    parent_us: float
    total_us: float
    rows_per_execution: float
    engine_wakeups: float | None  # voluntary context switches of the engine (front end with --workers 1) per request
    engine_preemptions: float | None  # involuntary ones


def measure(
    binary: Path, server: RunningServer, workers: int, transport: str, concurrency: int, window_ms: int, work: Path
) -> Row:
    from lib.perf_analyzer import GRPC, HTTP_BINARY, perf_analyzer_command, read_last_row

    children = server.children()
    engine = children["engine"]
    frontends = children["frontend"] if workers > 1 else [server.process.pid]
    parent = [server.process.pid] if workers > 1 else []
    pids = {"engine": engine, "frontend": frontends, "parent": parent}
    report = work / "report.csv"
    report.unlink(missing_ok=True)
    url = server.grpc_url if transport == "grpc" else server.http_url
    command = perf_analyzer_command(
        binary, MODEL, url, GRPC if transport == "grpc" else HTTP_BINARY, concurrency, window_ms, 100, 3, report
    )
    env = {**os.environ, "TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT": "1"}
    core = engine[0] if workers > 1 else server.process.pid  # the process whose event loop runs the batches
    before = {role: sum(cpu_s(p) for p in ps) for role, ps in pids.items()}
    switches_before = context_switches(core)
    served_before, executions_before = served_and_executions(server)
    for _attempt in range(3):  # on a busy machine perf_analyzer may find no stable window: try again
        completed = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
        if completed.returncode == 0 and report.exists():
            break
    served_after, executions_after = served_and_executions(server)
    served = served_after - served_before
    switches_after = context_switches(core)
    after = {role: sum(cpu_s(p) for p in ps) for role, ps in pids.items()}
    if completed.returncode != 0 or not report.exists():
        raise RuntimeError(f"perf_analyzer failed: {(completed.stdout + completed.stderr)[-800:]}")
    row = read_last_row(report)
    per = {role: 1e6 * (after[role] - before[role]) / max(1, served) for role in pids}
    measured = Row(
        workers, transport, concurrency, row["Inferences/Second"], row["p50 latency"], row["p99 latency"],
        per["engine"] if workers > 1 else None, per["frontend"], per["parent"], sum(per.values()),
        served / max(1, executions_after - executions_before),
        (switches_after[0] - switches_before[0]) / max(1, served),
        (switches_after[1] - switches_before[1]) / max(1, served),
    )  # fmt: skip
    print(
        f"  workers {workers}, {transport}, c{concurrency}: {measured.infer_per_s:,.0f} infer/s; CPU/request: "
        f"engine {fmt(measured.engine_us)} us, front ends {measured.frontend_us:,.0f} us, total {measured.total_us:,.0f} us",
        flush=True,
    )
    return measured


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def predict(engine_us: float, frontend_us: float, cores: int) -> float:
    return min(1e6 / engine_us, (cores - 1) * 1e6 / frontend_us)


def markdown(rows: list[Row], command: str, window_ms: int) -> str:
    from lib.machine import machine_lines
    from lib.perf_analyzer import install_perf_analyzer

    lines = [
        f"_Written by `bench/scaling.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._",
        "", "```sh", command, "```", "",
        *machine_lines(install_perf_analyzer(), 1), "",
        f"Example `{MODEL}` (16 -> 4, dynamic batching, 500 us window), batch-1 requests, perf_analyzer "
        f"({window_ms} ms windows, binary tensors, TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=1) on the same cores "
        "as the server. CPU per request: each process's utime + stime (/proc/<pid>/stat) over the run divided by "
        "the requests the statistics extension counted over it. With --workers 1 the one process is in "
        "`front ends`. Rows/exec: requests per model execution (statistics extension). Wake-ups and "
        "preemptions: voluntary and involuntary context switches (/proc/<pid>/status) per request of the "
        "process that runs the batches (the engine; with --workers 1 the one process).",
        "",
        "| workers | protocol | concurrency | infer/s | p50 us | p99 us | engine CPU us/req | front ends CPU us/req "
        "| supervisor us/req | total CPU us/req | rows/exec | wake-ups/req | preemptions/req |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r.workers} | {r.transport} | {r.concurrency} | {r.infer_per_s:,.0f} | {r.p50_us:,.0f} | "
            f"{r.p99_us:,.0f} | {fmt(r.engine_us)} | {r.frontend_us:,.0f} | {r.parent_us:,.1f} | {r.total_us:,.0f} | "
            f"{r.rows_per_execution:.1f} | {r.engine_wakeups:.2f} | {r.engine_preemptions:.2f} |"
        )
    lines += [
        "",
        "Predicted throughput on C cores, load generator elsewhere, from the c32 rows with --workers 2: "
        "`infer/s(C) = min(1e6 / engine_us, (C - 1) * 1e6 / frontend_us)` (one engine event loop, C - 1 front "
        "ends scaling linearly).",
        "",
        "| protocol | engine us/req | front ends us/req | " + " | ".join(f"{c} cores" for c in PREDICT_CORES) + " |",
        "|---|---:|---:|" + "---:|" * len(PREDICT_CORES),
    ]
    targets: list[str] = []
    for transport in TRANSPORTS:
        two = next((r for r in rows if (r.workers, r.transport, r.concurrency) == (2, transport, 32)), None)
        one = next((r for r in rows if (r.workers, r.transport, r.concurrency) == (1, transport, 32)), None)
        if two is None or two.engine_us is None:
            continue
        predicted = " | ".join(f"{predict(two.engine_us, two.frontend_us, c):,.0f}" for c in PREDICT_CORES)
        lines.append(f"| {transport} | {two.engine_us:,.0f} | {two.frontend_us:,.0f} | {predicted} |")
        targets.append(
            f"- {transport}: engine CPU per request at c32 (--workers 2) {two.engine_us:,.0f} us (target <= 50 us): "
            f"{'**PASS**' if two.engine_us <= 50 else '**MISS**'}"
        )
        if one is not None:
            ratio = two.total_us / one.total_us
            targets.append(
                f"- {transport}: total CPU per request, --workers 2 / --workers 1 at c32: {ratio:.2f}x "
                f"(target <= 1.25x): {'**PASS**' if ratio <= 1.25 else '**MISS**'}"
            )
    lines += ["", "Targets (issue 13, 2-core machine):", "", *targets]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--window-ms", type=int, default=1500)
    args = parser.parse_args()
    from lib.perf_analyzer import install_perf_analyzer
    from lib.report import write_section

    binary = install_perf_analyzer()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = Path(tmp)
        for workers in args.workers:
            server = start_server(None, work / f"w{workers}", ["--log-level", "warning"], workers=workers)
            try:
                for transport in TRANSPORTS:
                    for concurrency in CONCURRENCIES:
                        rows.append(measure(binary, server, workers, transport, concurrency, args.window_ms, work))
            finally:
                server.stop()
    command = "python bench/scaling.py" + "".join(
        f" {flag} {value}" for flag, value in (("--window-ms", args.window_ms),) if value != 1500
    )
    write_section(args.out, markdown(rows, command, args.window_ms), BEGIN_MARKER, END_MARKER, HEADING)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

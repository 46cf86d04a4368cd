"""The serving benchmark: model-runtime vs. in-process ONNX Runtime vs. a naive server, in one run.

    python bench/run.py [--quick] [--models mlp,wide] [--out bench/RESULTS.md] [--keep DIR]

What one run does (`make bench` runs it with the defaults):

1. Writes a model repository with the example `mlp` (16 -> 32 -> 4, tiny: overhead-bound) and the
   `wide` benchmark model (runtime.examples.build_wide_mlp, 512 -> 3x2048 -> 16, 36 MiB: compute-bound),
   each twice: batching on (`mlp`, `wide`: config with `dynamic_batching { max_queue_delay_microseconds }`)
   and batching off (`mlp_nobatch`, `wide_nobatch`: the same config without the block).
2. Starts model-runtime on it (tests/serving.py) and drives every model with Triton's perf_analyzer
   over gRPC, HTTP with binary tensors and HTTP with JSON tensors, at concurrency 1, 8, 32 and 64.
   Around each point it reads the server's counters (`/v2/models/{m}/stats` if the server has the
   statistics extension, else Prometheus `model_runtime_inference_rows` / `model_runtime_executions`)
   to get the average batch the batcher formed.
3. Starts bench/naive_server.py (FastAPI, `session.run` on the event loop) per model and drives it the
   same way over HTTP.
4. Runs the model in-process (bench/inprocess.py: `session.run` in a loop, no server) at batch 1 and at
   the batch sizes the batcher formed.
5. Replaces the part of `--out` between `<!-- run.py:begin -->` and `<!-- run.py:end -->` (the
   file is created from a template with placeholders for the other benchmarks if missing) with: the
   machine, the command, the issue-3 target ratios with PASS/MISS, and the tables.

Every ONNX Runtime session (server, naive server, in-process) gets the same `--intra-op-threads`
(default 1), so the comparisons are of serving overhead, not of thread counts. Nothing is pinned:
perf_analyzer, the server and its ONNX Runtime threads share the machine's cores, as they would on a
small host; the report records the core count and the load average before and after.

A full run (64 perf_analyzer points of 1.5 s windows) takes about 9 minutes on 2 cores (~17 if
no point settled at ±25% and every one needed the retry); `--quick` (concurrency 1 and 32, 0.5 s
windows, 22 points, HTTP-JSON for the example mlp only) about 1.5. `--models wide` measures only the
wide model (its targets, 3a and 3b: batching on / off and the tail), `--models mlp` only the example.
The adaptive batching window's own comparison (adaptive vs fixed vs no batching) is bench/batch_window.py.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))  # tests/serving.py: start the real server on ephemeral ports

from inprocess import measure_inprocess
from lib.machine import busy_warning, load_average, machine_lines
from lib.perf_analyzer import (
    GRPC,
    HTTP_BINARY,
    HTTP_JSON,
    STABILITY_ERROR,
    Transport,
    install_perf_analyzer,
    perf_analyzer_command,
    read_last_row,
)
from lib.report import difference, fmt, ratio, verdict, write_section
from lib.scrape import average_batch, read_counters
from lib.servers import naive_server, wait_ready
from tests.serving import start_server

from runtime.examples import build_mlp, build_wide_mlp, save_model


# Issue 3's targets.
TARGET_VS_INPROCESS = 0.25  # gRPC mlp c32 throughput / in-process batch-1 throughput
TARGET_VS_NAIVE = 3.0  # gRPC mlp c32 throughput / naive server c32 throughput
TARGET_OVERHEAD_US = {"grpc": 150.0, "http": 250.0}  # c1 p50 minus in-process batch-1 p50
TARGET_BATCHING_GAIN = 2.5  # wide c32: batching on / off throughput
TARGET_TAIL_RATIO = 3.0  # wide c32, batching on: p99 / p50


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    base: str  # mlp, wide
    max_batch_size: int
    delay_us: int
    input_dims: int
    output_dims: int


@dataclass(frozen=True)
class Plan:
    concurrency: tuple[int, ...]
    window_ms: int
    max_trials: int
    stability_pct: int
    inprocess_s: float
    # (served model name, transports)
    server_runs: tuple[tuple[str, tuple[Transport, ...]], ...]
    naive_runs: tuple[tuple[str, tuple[Transport, ...]], ...]


def make_plan(args: argparse.Namespace) -> Plan:
    plan = _make_plan(args)
    if args.models is None:
        return plan
    kept = set(args.models)
    return replace(
        plan,
        server_runs=tuple(run for run in plan.server_runs if run[0].removesuffix("_nobatch") in kept),
        naive_runs=tuple(run for run in plan.naive_runs if run[0] in kept),
    )


def _make_plan(args: argparse.Namespace) -> Plan:
    every = (GRPC, HTTP_BINARY, HTTP_JSON)
    if args.quick:
        return Plan(
            concurrency=tuple(args.concurrency or (1, 32)),
            window_ms=args.window_ms or 500,
            max_trials=args.max_trials or 4,
            stability_pct=args.stability_percentage,
            inprocess_s=0.5,
            server_runs=(
                ("mlp", every),
                ("mlp_nobatch", (GRPC, HTTP_BINARY)),
                ("wide", (GRPC, HTTP_BINARY)),
                ("wide_nobatch", (GRPC, HTTP_BINARY)),
            ),
            naive_runs=(("mlp", (HTTP_BINARY,)), ("wide", (HTTP_BINARY,))),
        )
    return Plan(
        concurrency=tuple(args.concurrency or (1, 8, 32, 64)),
        window_ms=args.window_ms or 1500,
        max_trials=args.max_trials or 5,
        stability_pct=args.stability_percentage,
        inprocess_s=2.0,
        server_runs=tuple((name, every) for name in ("mlp", "mlp_nobatch", "wide", "wide_nobatch")),
        naive_runs=(("mlp", (HTTP_BINARY, HTTP_JSON)), ("wide", (HTTP_BINARY, HTTP_JSON))),
    )


# --- the model repository ------------------------------------------------------------------------


def config_text(name: str, spec: ModelSpec, batching: bool) -> str:
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {spec.max_batch_size}",
        f'input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {spec.input_dims} ] }} ]',
        f'output [ {{ name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ {spec.output_dims} ] }} ]',
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
    ]
    if batching:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {spec.delay_us} }}")
    return "\n".join(lines) + "\n"


def write_repository(root: Path, specs: dict[str, ModelSpec]) -> dict[str, Path]:
    """repo/{mlp,mlp_nobatch,wide,wide_nobatch}; returns the ONNX file of each base model."""
    builders = {"mlp": build_mlp, "wide": build_wide_mlp}
    files: dict[str, Path] = {}
    for base, spec in specs.items():
        model = builders[base]()
        files[base] = save_model(model, root, base, config_pbtxt=config_text(base, spec, batching=True))
        nobatch = f"{base}_nobatch"
        save_model(model, root, nobatch, config_pbtxt=config_text(nobatch, spec, batching=False))
    return files


# --- perf_analyzer -------------------------------------------------------------------------------


@dataclass
class Point:
    """One perf_analyzer measurement."""

    target: str  # server, naive
    model: str  # served name: mlp, mlp_nobatch, wide, wide_nobatch
    transport: Transport
    concurrency: int
    throughput: float | None = None  # inferences (rows) / s
    p50_us: float | None = None
    p99_us: float | None = None
    avg_batch: float | None = None
    note: str = ""

    @property
    def base(self) -> str:
        return self.model.removesuffix("_nobatch")

    @property
    def variant(self) -> str:
        if self.target == "naive":
            return "naive server"
        return "batching off" if self.model.endswith("_nobatch") else "batching on"


def measure(binary: Path, point: Point, url: str, plan: Plan, work: Path, log: list[str]) -> None:
    """Fill `point` from one perf_analyzer run; on a stability failure, retry once with a loose rule."""
    report = work / f"{point.target}-{point.model}-{point.transport.label}-c{point.concurrency}.csv"
    # The retry's windows are twice as long: a short window at high latency may catch no responses.
    retry_note = f"unstable at ±{plan.stability_pct}%: 3 windows of {2 * plan.window_ms} ms at ±100%"
    attempts = [
        (plan.stability_pct, plan.max_trials, plan.window_ms, ""),
        (100, 3, 2 * plan.window_ms, retry_note),
    ]
    output: list[str] = []
    for stability, trials, window_ms, note in attempts:
        report.unlink(missing_ok=True)
        command = perf_analyzer_command(
            binary, point.model, url, point.transport, point.concurrency, window_ms, stability, trials, report
        )
        timeout_s = 60 + 4 * trials * window_ms / 1000
        try:
            completed = subprocess.run(
                command, check=False, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            point.note = f"perf_analyzer timed out after {timeout_s:.0f} s"
            log.append(f"{shlex.join(command)}\n  timed out")
            return
        log.append(f"{shlex.join(command)}\n  exit {completed.returncode}")
        if completed.returncode == 0 and report.exists():
            row = read_last_row(report)
            point.throughput = row["Inferences/Second"]
            point.p50_us = row["p50 latency"]
            point.p99_us = row["p99 latency"]
            point.note = note
            return
        output = (completed.stdout + completed.stderr).strip().splitlines()
        if completed.returncode != STABILITY_ERROR:
            point.note = f"perf_analyzer exit {completed.returncode}: {output[-1] if output else ''}"[:160]
            log.append("  " + "\n  ".join(output[-15:]))
            return
    log.append("  " + "\n  ".join(output[-15:]))
    point.note = f"no stable measurement even at ±100%: {output[-1] if output else ''}"[:160]


# --- the report ----------------------------------------------------------------------------------


@dataclass
class Results:
    points: list[Point] = field(default_factory=list)
    inprocess: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # base -> rows

    def find(self, target: str, model: str, transport: str, concurrency: int) -> Point | None:
        for point in self.points:
            if (point.target, point.model, point.transport.label, point.concurrency) == (
                target, model, transport, concurrency,
            ):  # fmt: skip
                return point if point.throughput is not None else None
        return None

    def inprocess_batch(self, base: str, batch_size: int) -> dict[str, Any] | None:
        for row in self.inprocess.get(base, []):
            if row["batch_size"] == batch_size:
                return row
        return None


def target_rows(results: Results, concurrency: Sequence[int], mlp_delay_us: int) -> list[str]:
    """The issue-3 targets: one table row each, with the figures they come from."""
    rows = ["| # | target | measured | from | verdict |", "|---|---|---|---|---|"]
    high = 32 if 32 in concurrency else max(concurrency)
    low = 1 if 1 in concurrency else min(concurrency)
    inproc_mlp = results.inprocess_batch("mlp", 1)
    inproc_tput = inproc_mlp["rows_per_s"] if inproc_mlp else None
    inproc_p50 = inproc_mlp["p50_us"] if inproc_mlp else None

    for model in ("mlp", "mlp_nobatch"):
        label = "example mlp" if model == "mlp" else "mlp, batching off"
        served = results.find("server", model, "grpc", high)
        got = ratio(served.throughput if served else None, inproc_tput)
        rows.append(
            f"| 1a | gRPC, {label}, c{high}: server / in-process batch-1 throughput >= "
            f"{TARGET_VS_INPROCESS:.0%} | {fmt(got and got * 100, 1)}% | "
            f"{fmt(served.throughput if served else None)} / {fmt(inproc_tput)} infer/s | "
            f"{verdict(None if got is None else got >= TARGET_VS_INPROCESS)} |"
        )
    naive = results.find("naive", "mlp", "http-binary", high)
    for model in ("mlp", "mlp_nobatch"):
        label = "example mlp" if model == "mlp" else "mlp, batching off"
        served = results.find("server", model, "grpc", high)
        got = ratio(served.throughput if served else None, naive.throughput if naive else None)
        rows.append(
            f"| 1b | gRPC, {label}, c{high}: server / naive server (HTTP binary) throughput >= "
            f"{TARGET_VS_NAIVE:g}x | {fmt(got, 2)}x | {fmt(served.throughput if served else None)} / "
            f"{fmt(naive.throughput if naive else None)} infer/s | "
            f"{verdict(None if got is None else got >= TARGET_VS_NAIVE)} |"
        )
    for transport, protocol in (("grpc", "grpc"), ("http-binary", "http")):
        for model in ("mlp", "mlp_nobatch"):
            label = f"example mlp ({mlp_delay_us} us window)" if model == "mlp" else "mlp, batching off"
            served = results.find("server", model, transport, low)
            overhead = difference(served.p50_us if served else None, inproc_p50)
            limit = TARGET_OVERHEAD_US[protocol]
            rows.append(
                f"| 2 | {transport}, {label}, c{low}: server p50 - in-process batch-1 p50 <= {limit:.0f} us | "
                f"{fmt(overhead)} us | {fmt(served.p50_us if served else None)} - {fmt(inproc_p50, 1)} us | "
                f"{verdict(None if overhead is None else overhead <= limit)} |"
            )
    for transport in ("grpc", "http-binary"):
        on = results.find("server", "wide", transport, high)
        off = results.find("server", "wide_nobatch", transport, high)
        gain = ratio(on.throughput if on else None, off.throughput if off else None)
        rows.append(
            f"| 3a | {transport}, wide, c{high}: batching on / off throughput >= {TARGET_BATCHING_GAIN:g}x | "
            f"{fmt(gain, 2)}x | {fmt(on.throughput if on else None)} / {fmt(off.throughput if off else None)} "
            f"infer/s | {verdict(None if gain is None else gain >= TARGET_BATCHING_GAIN)} |"
        )
        tail = ratio(on.p99_us if on else None, on.p50_us if on else None)
        rows.append(
            f"| 3b | {transport}, wide, c{high}, batching on: p99 / p50 <= {TARGET_TAIL_RATIO:g} | "
            f"{fmt(tail, 2)} | {fmt(on.p99_us if on else None)} / {fmt(on.p50_us if on else None)} us | "
            f"{verdict(None if tail is None else tail <= TARGET_TAIL_RATIO)} |"
        )
    return rows


def point_rows(points: Sequence[Point]) -> list[str]:
    rows = [
        "| model | variant | protocol | tensors | concurrency | infer/s | p50 us | p99 us | avg batch | note |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for point in points:
        rows.append(
            f"| {point.base} | {point.variant} | {point.transport.protocol} | {point.transport.tensor_format} | "
            f"{point.concurrency} | {fmt(point.throughput)} | {fmt(point.p50_us)} | {fmt(point.p99_us)} | "
            f"{fmt(point.avg_batch, 1)} | {point.note} |"
        )
    return rows


def inprocess_rows(results: Results) -> list[str]:
    rows = [
        "| model | batch | calls/s | rows/s | p50 us | p99 us |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for base, measured in results.inprocess.items():
        for row in measured:
            rows.append(
                f"| {base} | {row['batch_size']} | {fmt(row['calls_per_s'])} | {fmt(row['rows_per_s'])} | "
                f"{fmt(row['p50_us'], 1)} | {fmt(row['p99_us'], 1)} |"
            )
    return rows


def render(
    results: Results,
    plan: Plan,
    specs: dict[str, ModelSpec],
    machine: list[str],
    command: str,
    started: datetime,
    elapsed_s: float,
    load_before: str,
    load_after: str,
    quick: bool,
) -> str:
    lines = [
        (
            f"_Written by `bench/run.py` on {started:%Y-%m-%d %H:%M} UTC in {elapsed_s / 60:.1f} min"
            f"{' (--quick: short windows, few points; indicative only)' if quick else ''}._"
        ),
        "",
        "```sh",
        command,
        "```",
        "",
        "Machine:",
        "",
        *machine,
        f"- Load average (1/5/15 min) before: {load_before}; after: {load_after}",
        *busy_warning(load_before),
        "",
        "Settings: perf_analyzer time windows of "
        f"{plan.window_ms} ms, stable when 3 windows agree within ±{plan.stability_pct}% (at most "
        f"{plan.max_trials} windows; a point that never settles is re-measured at ±100% and says so), "
        "batch 1 per request, synchronous clients. "
        + "; ".join(
            f"`{base}`: max_batch_size {spec.max_batch_size}, batching-on window {spec.delay_us} us"
            for base, spec in specs.items()
        )
        + ". In-process: `session.run` in a loop on one thread, "
        f"{plan.inprocess_s:g} s per batch size, at batch 1 and at the average batches the server formed.",
        "",
        "### Targets (issue 3)",
        "",
        *target_rows(results, plan.concurrency, specs["mlp"].delay_us),
        "",
        "### model-runtime",
        "",
        (
            "`avg batch`: rows / executions the server counted during the point (its statistics extension "
            "or Prometheus counters)."
        ),
        "",
        *point_rows([point for point in results.points if point.target == "server"]),
        "",
        "### Naive server (bench/naive_server.py, HTTP only)",
        "",
        *point_rows([point for point in results.points if point.target == "naive"]),
        "",
        "### In-process ONNX Runtime (bench/inprocess.py)",
        "",
        *inprocess_rows(results),
    ]
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def describe(point: Point) -> str:
    batch = f" batch={point.avg_batch:.1f}" if point.avg_batch else ""
    return (
        f"{point.target:6} {point.model:13} {point.transport.label:12} c={point.concurrency:<3}"
        f" infer/s={fmt(point.throughput)} p50={fmt(point.p50_us)}us p99={fmt(point.p99_us)}us{batch}"
        f" {point.note}"
    )


def run_server_points(
    binary: Path, repo: Path, work: Path, plan: Plan, threads: int, results: Results, log: list[str]
) -> None:
    server = start_server(
        repo, work / "server", ["--intra-op-threads", str(threads), "--log-level", "warning"]
    )
    try:
        wait_ready(server.http_url, [name for name, _ in plan.server_runs], server.process)
        for model, transports in plan.server_runs:
            for transport in transports:
                url = server.grpc_url if transport.protocol == "grpc" else server.http_url
                for concurrency in plan.concurrency:
                    point = Point("server", model, transport, concurrency)
                    before = read_counters(server, model)
                    measure(binary, point, url, plan, work, log)
                    point.avg_batch = average_batch(before, read_counters(server, model))
                    results.points.append(point)
                    progress(describe(point))
                    if server.process.poll() is not None:
                        raise RuntimeError(f"server exited; log:\n{server.log()[-4000:]}")
    finally:
        server.stop()


def run_naive_points(
    binary: Path,
    files: dict[str, Path],
    specs: dict[str, ModelSpec],
    work: Path,
    plan: Plan,
    threads: int,
    results: Results,
    log: list[str],
) -> None:
    for base, transports in plan.naive_runs:
        log_path = work / f"naive-{base}.log"
        with naive_server(files[base], base, specs[base].max_batch_size, threads, log_path) as url:
            for transport in transports:
                for concurrency in plan.concurrency:
                    point = Point("naive", base, transport, concurrency)
                    measure(binary, point, url, plan, work, log)
                    results.points.append(point)
                    progress(describe(point))


def formed_batches(results: Results, base: str, limit: int) -> list[int]:
    """Batch 1 plus the (rounded) average batches the server formed for `base`, any transport."""
    sizes = {1}
    for point in results.points:
        if point.target == "server" and point.model == base and point.avg_batch:
            sizes.add(min(limit, max(1, round(point.avg_batch))))
    return sorted(sizes)


def parse_concurrency(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"concurrency must be positive integers, got {text!r}")
    return values


def parse_models(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(values) - {"mlp", "wide"})
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"models are mlp and wide, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="concurrency 1 and 32, 0.5 s windows, fewer variants"
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH_DIR / "RESULTS.md", help="report (bench/RESULTS.md)"
    )
    parser.add_argument("--keep", type=Path, help="keep the repository, CSVs and logs in this folder")
    parser.add_argument("--concurrency", type=parse_concurrency, help="comma list (1,8,32,64; quick: 1,32)")
    parser.add_argument(
        "--models", type=parse_models, help="comma list of the models to measure: mlp, wide (both)"
    )
    parser.add_argument(
        "--window-ms", type=int, help="perf_analyzer --measurement-interval (1500; quick: 500)"
    )
    parser.add_argument("--max-trials", type=int, help="perf_analyzer --max-trials (5; quick: 4)")
    parser.add_argument("--stability-percentage", type=int, default=25, help="perf_analyzer's rule (25)")
    parser.add_argument("--intra-op-threads", type=int, default=1, help="ONNX Runtime threads everywhere (1)")
    parser.add_argument(
        "--mlp-delay-us", type=int, default=500, help="mlp batching window (500, the example's)"
    )
    parser.add_argument("--wide-delay-us", type=int, default=1000, help="wide batching window (1000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    plan = make_plan(args)
    specs = {
        "mlp": ModelSpec("mlp", 32, args.mlp_delay_us, 16, 4),  # the example's config
        "wide": ModelSpec("wide", 64, args.wide_delay_us, 512, 16),
    }
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    load_before = load_average()
    binary = install_perf_analyzer()
    work = args.keep or Path(tempfile.mkdtemp(prefix="model-runtime-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = Results()
    log: list[str] = []
    try:
        files = write_repository(work / "repo", specs)
        progress(f"repository in {work / 'repo'}; server points")
        run_server_points(binary, work / "repo", work, plan, args.intra_op_threads, results, log)
        progress("naive server points")
        run_naive_points(binary, files, specs, work, plan, args.intra_op_threads, results, log)
        for base, path in files.items():
            if args.models is not None and base not in args.models:
                continue
            sizes = formed_batches(results, base, specs[base].max_batch_size)
            progress(f"in-process {base} at batch {sizes}")
            results.inprocess[base] = measure_inprocess(
                str(path), sizes, plan.inprocess_s, args.intra_op_threads
            )
        machine = machine_lines(binary, args.intra_op_threads)
        section = render(
            results,
            plan,
            specs,
            machine,
            command,
            started,
            time.monotonic() - clock,
            load_before,
            load_average(),
            args.quick,
        )
        write_section(args.out, section)
        (work / "perf_analyzer.log").write_text("\n".join(log) + "\n")
        print(section)
        progress(f"wrote {args.out} in {(time.monotonic() - clock) / 60:.1f} min")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

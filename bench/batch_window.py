"""The adaptive batching window against Triton's fixed one and against no batching, in one run.

    python bench/batch_window.py [--repeats 2] [--concurrency 1,8,32,64] [--transports grpc,http-binary]
                                 [--stability-percentage 25] [--out bench/RESULTS.md]

One server, three copies of one model that differ only in how they batch:

- `adaptive`: `dynamic_batching { preferred_batch_size: [8, 16, 32] max_queue_delay_microseconds: 2000 }`
  (the issue's config), with the default `batch_window` (adaptive);
- `fixed`: the same plus `parameters { key: "batch_window" value: { string_value: "fixed" } }` (Triton's wait);
- `nobatch`: no `dynamic_batching` block.

The model is the issue's MLP, 256 -> 1024 -> 1024 -> 10 (runtime.examples.build_wide_mlp(256, 1024, 2, 10)),
`--model example` the example mlp (16 -> 32 -> 4) instead. Each concurrency level measures, one right after
the other (perf_analyzer, batch-1 requests), the two models its target compares (c1: adaptive and nobatch;
c8 and up: adaptive and fixed; the order flips every repeat) and, in the first repeat only, the third one
for the table. The whole sweep runs `--repeats` times: a target is the median of the per-repeat
differences or ratios of its pair, which cancels most of this VM's drift, and the spread between repeats
shows the noise that remains. At c1 the server's own time per request outside the model's execution
(the statistics extension: success minus compute_infer ns) is reported too, which the client's
noise does not reach. The average batch comes from the statistics
extension around each point. The section between `<!-- batch_window.py:begin -->` and `:end -->` in
`--out` is replaced with the command, the machine, the targets of issue 15 and the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from lib.machine import busy_warning, load_average, machine_lines
from lib.perf_analyzer import GRPC, HTTP_BINARY, HTTP_JSON, Transport, install_perf_analyzer
from lib.report import fmt, ratio, verdict, write_section
from lib.scrape import average_batch, fetch, read_counters
from lib.servers import wait_ready
from run import Plan, Point, measure
from tests.serving import RunningServer, start_server

from runtime.examples import build_mlp, build_wide_mlp, save_model

BEGIN = "<!-- batch_window.py:begin -->"
END = "<!-- batch_window.py:end -->"
HEADING = "Adaptive batching window (bench/batch_window.py)"
TRANSPORTS = {t.label: t for t in (GRPC, HTTP_BINARY, HTTP_JSON)}
VARIANTS = ("adaptive", "fixed", "nobatch")

# Issue 15's targets.
TARGET_C1_US = 100.0  # c1 p50, batching on (adaptive) minus batching off
TARGET_THROUGHPUT = 0.95  # c8-c64: adaptive / fixed throughput
TARGET_BATCH = 0.90  # c8-c64: adaptive / fixed average batch


@dataclass(frozen=True)
class Shape:
    label: str
    input_dims: int
    output_dims: int


SHAPES = {
    "issue": Shape("the issue's MLP 256-1024-1024-10", 256, 10),
    "example": Shape("the example mlp 16-32-4", 16, 4),
    "wide": Shape("bench/run.py's wide model 512-3x2048-16", 512, 16),
}


def config_text(name: str, shape: Shape, variant: str, delay_us: int) -> str:
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 32",
        f'input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {shape.input_dims} ] }} ]',
        f'output [ {{ name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ {shape.output_dims} ] }} ]',
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
    ]
    if variant != "nobatch":
        lines.append(
            f"dynamic_batching {{ preferred_batch_size: [ 8, 16, 32 ] max_queue_delay_microseconds: {delay_us} }}"
        )
    if variant == "fixed":
        lines.append('parameters { key: "batch_window" value: { string_value: "fixed" } }')
    return "\n".join(lines) + "\n"


def write_repository(root: Path, model: str, delay_us: int) -> None:
    shape = SHAPES[model]
    graph = {"issue": lambda: build_wide_mlp(256, 1024, 2, 10), "wide": build_wide_mlp, "example": build_mlp}[model]()
    for variant in VARIANTS:
        save_model(graph, root, variant, config_pbtxt=config_text(variant, shape, variant, delay_us))


def spread(values: list[float]) -> str:
    """Median, and the range across repeats as +-% of it."""
    if not values:
        return "-"
    middle = statistics.median(values)
    if len(values) == 1 or not middle:
        return fmt(middle)
    half_range = (max(values) - min(values)) / 2 / middle * 100
    return f"{fmt(middle)} ±{half_range:.0f}%"


def paired_ratios(points: dict[tuple[str, str, int], list[Point]], transport: str, level: int, attr: str) -> list[float]:
    """adaptive / fixed for each repeat: the two were measured one right after the other, so a ratio
    cancels most of the machine's slower drift (other work starting and stopping)."""
    adaptive = points.get((transport, "adaptive", level), [])
    fixed = points.get((transport, "fixed", level), [])
    found = [ratio(getattr(a, attr), getattr(f, attr)) for a, f in zip(adaptive, fixed)]
    return [r for r in found if r is not None]


def variants_at(level: int, repeat: int) -> tuple[str, ...]:
    """What one repeat measures at a level: its target's pair, the order flipped every other repeat,
    then (first repeat only) the third variant, which only the table shows."""
    pair = ("nobatch", "adaptive") if level == 1 else ("fixed", "adaptive")
    third = "fixed" if level == 1 else "nobatch"
    return (pair if repeat % 2 == 0 else pair[::-1]) + ((third,) if repeat == 0 else ())


def outside_execution(server: RunningServer, model: str) -> tuple[float, float] | None:
    """(successful requests, ns spent in the server outside execution) so far, from the statistics
    extension: per request, the window's own cost plus validation, queueing, batching and the split."""
    try:
        stats = json.loads(fetch(f"http://{server.http_url}/v2/models/{model}/stats"))["model_stats"][0]
        inference = stats["inference_stats"]
        return float(inference["success"]["count"]), float(inference["success"]["ns"]) - float(
            inference["compute_infer"]["ns"]
        )
    except (OSError, ValueError, KeyError, IndexError):
        return None


async def engine_latencies(repo: Path, requests: int, rounds: int) -> dict[str, list[float]]:
    """Median us per lone engine.infer for each variant, `rounds` times (variants interleaved): the
    core's cost of a request at concurrency 1 (validation, queue, execution, split), without a
    transport, so that the difference the window makes is not lost in the transport's noise."""
    import numpy as np

    from runtime.types import InferRequest
    from tests.engine import in_process_engine

    config = (repo / "adaptive" / "config.pbtxt").read_text()
    shape = next(s for s in SHAPES.values() if f'"INPUT" data_type: TYPE_FP32 dims: [ {s.input_dims} ]' in config)
    data = np.random.default_rng(0).standard_normal((1, shape.input_dims)).astype(np.float32)
    found: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    async with in_process_engine(repo, intra_op_threads=1) as core:
        for _ in range(rounds):
            for variant in VARIANTS:
                timings = []
                for _ in range(requests):
                    started = time.perf_counter()
                    await core.engine.infer(InferRequest(variant, "", {"INPUT": data}))
                    timings.append((time.perf_counter() - started) * 1e6)
                found[variant].append(statistics.median(timings))
    return found


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default="issue")
    parser.add_argument("--delay-us", type=int, default=2000, help="max_queue_delay_microseconds (2000)")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--transports", default="grpc,http-binary")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--window-ms", type=int, default=1000, help="perf_analyzer --measurement-interval")
    parser.add_argument(
        "--stability-percentage", type=int, default=25,
        help="perf_analyzer's rule (25); 100 takes the first 3 windows, for more, shorter repeats",
    )
    parser.add_argument("--inprocess-requests", type=int, default=2000, help="lone engine.infer calls per round (2000)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "bench/batch_window.py", *(sys.argv[1:] if argv is None else argv)])
    concurrency = [int(c) for c in args.concurrency.split(",")]
    transports: list[Transport] = [TRANSPORTS[label] for label in args.transports.split(",")]
    plan = Plan(tuple(concurrency), args.window_ms, 5, args.stability_percentage, 0.0, (), ())
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    load_before = load_average()
    binary = install_perf_analyzer()
    work = Path(tempfile.mkdtemp(prefix="batch-window-bench-"))
    write_repository(work / "repo", args.model, args.delay_us)
    points: dict[tuple[str, str, int], list[Point]] = {}
    server_us: dict[int, float] = {}  # id(point) -> server us per request outside execution (c1)
    log: list[str] = []
    server = start_server(work / "repo", work / "server", ["--intra-op-threads", "1", "--log-level", "warning"])
    try:
        wait_ready(server.http_url, list(VARIANTS), server.process)
        warmup = Plan((1,), 300, 2, 100, 0.0, (), ())
        for variant in VARIANTS:  # sessions and connections warm before anything counts
            measure(binary, Point("server", variant, transports[0], 4), server.grpc_url
                    if transports[0].protocol == "grpc" else server.http_url, warmup, work, log)
        for repeat in range(args.repeats):
            for transport in transports:
                url = server.grpc_url if transport.protocol == "grpc" else server.http_url
                for level in concurrency:
                    for variant in variants_at(level, repeat):
                        point = Point("server", variant, transport, level)
                        before = read_counters(server, variant)
                        outside = outside_execution(server, variant)
                        measure(binary, point, url, plan, work, log)
                        point.avg_batch = average_batch(before, read_counters(server, variant))
                        after = outside_execution(server, variant)
                        if outside and after and after[0] > outside[0]:
                            server_us[id(point)] = (after[1] - outside[1]) / (after[0] - outside[0]) / 1e3
                        points.setdefault((transport.label, variant, level), []).append(point)
                        print(
                            f"[{time.monotonic() - clock:6.0f} s] repeat {repeat + 1} {transport.label} c{level} "
                            f"{variant}: {fmt(point.throughput)}/s p50 {fmt(point.p50_us)} us "
                            f"batch {fmt(point.avg_batch, 1)} {point.note}",
                            flush=True,
                        )
    finally:
        server.stop()
    (work / "perf_analyzer.log").write_text("\n".join(log) + "\n")
    core = asyncio.run(engine_latencies(work / "repo", args.inprocess_requests, 5))

    def values(transport: str, variant: str, level: int, attr: str) -> list[float]:
        return [v for p in points.get((transport, variant, level), []) if (v := getattr(p, attr)) is not None]

    lines = [
        f"Command: `{command}` ({datetime.now(timezone.utc) - started} on {started:%Y-%m-%d %H:%M} UTC). "
        f"Model: {SHAPES[args.model].label}, max_batch_size 32, preferred [8, 16, 32], window {args.delay_us} us; "
        f"perf_analyzer windows of {args.window_ms} ms, batch-1 requests; {args.repeats} repeats of the sweep, "
        f"perf_analyzer stable within ±{args.stability_percentage}%; at each level the target's two models back to back "
        "(c1: adaptive, nobatch; c8 and up: fixed, adaptive; the order flipped every repeat), the third in the first "
        "repeat only. Figures: median over repeats, ± half the range across repeats as % of the median (the "
        "run-to-run noise of this shared machine); each target is the median of the per-repeat differences or "
        "ratios of its pair.",
        "",
        *machine_lines(binary, 1),
        f"- Load average before / after: {load_before} / {load_average()}",
        *busy_warning(load_before),
        "",
        "| # | target | transport | measured | verdict |",
        "|---|---|---|---|---|",
    ]
    for transport in (t.label for t in transports):
        if 1 in concurrency:
            on = median(values(transport, "adaptive", 1, "p50_us"))
            off = median(values(transport, "nobatch", 1, "p50_us"))
            fixed = median(values(transport, "fixed", 1, "p50_us"))
            gaps = [
                a.p50_us - n.p50_us
                for a, n in zip(points.get((transport, "adaptive", 1), []), points.get((transport, "nobatch", 1), []))
                if a.p50_us is not None and n.p50_us is not None
            ]
            gap = median(gaps)
            lines.append(
                f"| 1 | c1 p50 batching on - off <= {TARGET_C1_US:.0f} us | {transport} | "
                f"{fmt(gap)} us (per repeat: {', '.join(fmt(g) for g in gaps)}; medians {fmt(on)} vs {fmt(off)}; "
                f"fixed window: {fmt(fixed)} us) | {verdict(None if gap is None else gap <= TARGET_C1_US)} |"
            )
            inside = [
                server_us[id(a)] - server_us[id(n)]
                for a, n in zip(points.get((transport, "adaptive", 1), []), points.get((transport, "nobatch", 1), []))
                if id(a) in server_us and id(n) in server_us
            ]
            if inside:
                lines.append(
                    f"| 1 | c1 server time per request outside execution (statistics: success - compute_infer), "
                    f"batching on - off <= {TARGET_C1_US:.0f} us | {transport} | {fmt(median(inside), 1)} us "
                    f"(per repeat: {', '.join(fmt(g, 1) for g in inside)}) | "
                    f"{verdict((median(inside) or 0) <= TARGET_C1_US)} |"
                )
        for level in (c for c in concurrency if c >= 8):
            for number, attr, what, target in (
                (2, "throughput", "throughput", TARGET_THROUGHPUT),
                (3, "avg_batch", "average batch", TARGET_BATCH),
            ):
                pairs = paired_ratios(points, transport, level, attr)
                middle = median(pairs)
                lines.append(
                    f"| {number} | c{level} {what} adaptive / fixed >= {target:.2f} | {transport} | "
                    f"{fmt(middle, 2)} (repeats: {', '.join(fmt(r, 2) for r in pairs)}) | "
                    f"{verdict(None if middle is None else middle >= target)} |"
                )
    core_gaps = [a - n for a, n in zip(core["adaptive"], core["nobatch"])]
    lines.append(
        f"| 1 | c1 in process (engine.infer, no transport): adaptive - batching off <= {TARGET_C1_US:.0f} us | - | "
        f"{fmt(median(core_gaps), 1)} us (rounds: {', '.join(fmt(g, 1) for g in core_gaps)}; medians "
        f"{fmt(median(core['adaptive']), 1)} vs {fmt(median(core['nobatch']), 1)} us; fixed window: "
        f"{fmt(median(core['fixed']), 0)} us) | {verdict(None if not core_gaps else (median(core_gaps) or 0) <= TARGET_C1_US)} |"
    )
    lines += [
        "",
        "| transport | concurrency | window | infer/s | p50 us | p99 us | average batch | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for transport in (t.label for t in transports):
        for level in concurrency:
            for variant in VARIANTS:
                notes = "; ".join(p.note for p in points.get((transport, variant, level), []) if p.note)
                lines.append(
                    f"| {transport} | {level} | {variant} | {spread(values(transport, variant, level, 'throughput'))} | "
                    f"{spread(values(transport, variant, level, 'p50_us'))} | "
                    f"{spread(values(transport, variant, level, 'p99_us'))} | "
                    f"{fmt(median(values(transport, variant, level, 'avg_batch')), 1)} | {notes} |"
                )
    section = "\n".join(lines)
    write_section(args.out, section, BEGIN, END, HEADING)
    print(section)


if __name__ == "__main__":
    main()

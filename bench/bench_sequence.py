"""Sequence batching: the `oldest` strategy against `direct` (the baseline, Triton's default) at c8 and c32.

Builds `rnn` in code: a stateful cell with implicit state (STATE_OUT = tanh(INPUT W1 + STATE_IN W2),
768 wide, fed back as STATE_IN) and a START control, and serves it three times with one config each:
`direct` (each sequence pinned to a slot: 2 instances x max_batch_size 16 = 32 slots), `oldest` with
no window, and `oldest` with a 1 ms window (batches of the oldest ready requests across up to 64
candidate sequences). perf_analyzer drives each with --sequence-length 8 over one gRPC stream per
concurrent sequence (--streaming) at concurrency 8 and 32. Figures per model: requests/s and
latency from perf_analyzer, the average batch (inference_count / execution_count from the statistics
extension over the run), server CPU per request (/proc/<pid>/stat over the run). Ratios are against
`direct` at the same concurrency, in the same run.

    python bench/bench_sequence.py              # ~3 minutes; rewrites its section of bench/RESULTS.md
    python bench/bench_sequence.py --out /tmp/r.md --window-requests 1000
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # tests/serving.py
sys.path.insert(0, str(BENCH_DIR))

from scaling import cpu_s  # noqa: E402
from tests.serving import RunningServer, start_server  # noqa: E402

WIDTH = 768
CONCURRENCIES = (8, 32)
BEGIN_MARKER = "<!-- bench_sequence:begin -->"
END_MARKER = "<!-- bench_sequence:end -->"
HEADING = "Sequence batching: oldest vs direct (bench/bench_sequence.py)"
STRATEGIES = {  # model name -> its strategy block; the first is the baseline
    "rnn_direct": "direct { }",
    "rnn_oldest": "oldest { max_candidate_sequences: 64 }",
    "rnn_oldest_1ms": "oldest { max_candidate_sequences: 64 max_queue_delay_microseconds: 1000 }",
}


def config(name: str, strategy: str) -> str:
    return f"""name: "{name}"
max_batch_size: 16
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
sequence_batching {{
  max_sequence_idle_microseconds: 5000000
  {strategy}
  control_input [ {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }} ]
  state [ {{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ {WIDTH} ]
            initial_state {{ data_type: TYPE_FP32 dims: [ {WIDTH} ] zero_data: true name: "zeros" }} }} ]
}}
"""


def build_rnn(seed: int = 0) -> onnx.ModelProto:
    """OUTPUT = STATE_OUT = tanh(INPUT W1 + STATE_IN W2) * (1 - START * 0): START is read, not needed
    (the server's initial state already starts a sequence at zeros)."""
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(WIDTH)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["INPUT", "W1"], ["a"]),
            helper.make_node("MatMul", ["STATE_IN", "W2"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["c"]),
            helper.make_node("Tanh", ["c"], ["h"]),
            helper.make_node("Cast", ["START"], ["start"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["start", "zero"], ["nothing"]),
            helper.make_node("Sub", ["h", "nothing"], ["OUTPUT"]),
            helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"]),
        ],
        "rnn",
        [
            helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", WIDTH]),
            helper.make_tensor_value_info("STATE_IN", TensorProto.FLOAT, ["batch", WIDTH]),
            helper.make_tensor_value_info("START", TensorProto.INT32, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", WIDTH]),
            helper.make_tensor_value_info("STATE_OUT", TensorProto.FLOAT, ["batch", WIDTH]),
        ],
        initializer=[
            numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) * scale).astype(np.float32), "W1"),
            numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) * scale).astype(np.float32), "W2"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def write_repository(root: Path) -> Path:
    model = build_rnn()
    for name, strategy in STRATEGIES.items():
        version = root / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(version / "model.onnx"))
        (root / name / "config.pbtxt").write_text(config(name, strategy))
    return root


def counts(server: RunningServer, model: str) -> tuple[float, float]:
    """(inference_count, execution_count) from the statistics extension (bench/lib/scrape.py)."""
    from lib.scrape import read_counters

    counters = read_counters(server, model)
    if counters is None:
        raise RuntimeError(f"the server reports no counters for {model!r}")
    return counters


@dataclass
class Row:
    model: str
    concurrency: int
    requests_per_s: float
    p50_us: float
    p99_us: float
    average_batch: float
    server_cpu_us: float
    stable: bool = True
    spread: tuple[float, float] = (0.0, 0.0)  # lowest and highest requests/s over the repeats


def median_row(runs: list[Row]) -> Row:
    """The repeat with the median requests/s, with the spread of all repeats (the box is shared and noisy)."""
    ordered = sorted(runs, key=lambda r: r.requests_per_s)
    middle = ordered[len(ordered) // 2]
    middle.spread = (ordered[0].requests_per_s, ordered[-1].requests_per_s)
    middle.stable = all(r.stable for r in runs)
    return middle


def measure(
    binary: Path, server: RunningServer, model: str, concurrency: int, window_requests: int, work: Path, first_id: int
) -> Row:
    from lib.perf_analyzer import STABILITY_ERROR, read_last_row

    report = work / "report.csv"
    report.unlink(missing_ok=True)
    pid = server.process.pid
    for attempt in range(3):  # a busy 2-core box may not meet the stability rule; a later try usually does
        command = [
            str(binary), "-m", model, "-u", server.grpc_url, "-i", "grpc", "--streaming",
            "--sequence-length", "8", "--sequence-id-range", f"{first_id + attempt * 10**6}:{first_id + (attempt + 1) * 10**6}",
            "--concurrency-range", str(concurrency), "--measurement-mode", "count_windows",
            "--measurement-request-count", str(window_requests),
            "--stability-percentage", "100", "--max-trials", "4", "-f", str(report),
        ]  # fmt: skip
        before_cpu, (rows_before, batches_before) = cpu_s(pid), counts(server, model)
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        rows, batches = counts(server, model)
        used = cpu_s(pid) - before_cpu
        if completed.returncode != STABILITY_ERROR or report.exists():
            break
    stable = completed.returncode == 0
    if completed.returncode not in (0, STABILITY_ERROR) or not report.exists():
        raise RuntimeError(f"perf_analyzer failed ({model} c{concurrency}, exit {completed.returncode}): {(completed.stdout + completed.stderr)[-3000:]}")
    row = read_last_row(report)
    served = rows - rows_before
    measured = Row(
        model, concurrency, row["Inferences/Second"], row["p50 latency"], row["p99 latency"],
        served / max(1, batches - batches_before), 1e6 * used / max(1, served), stable,
    )  # fmt: skip
    print(
        f"  {model} c{concurrency}: {measured.requests_per_s:,.0f} requests/s, p50 {measured.p50_us / 1000:,.2f} ms, "
        f"batch {measured.average_batch:.1f}, server CPU {measured.server_cpu_us:,.0f} us/request",
        flush=True,
    )
    return measured


def markdown(rows: list[Row], command: str, window_requests: int, repeats: int, load_before: str) -> str:
    from lib.machine import busy_warning, machine_lines
    from lib.perf_analyzer import install_perf_analyzer
    from lib.report import fmt, ratio

    baseline = {r.concurrency: r for r in rows if r.model == next(iter(STRATEGIES))}
    lines = [
        f"_Written by `bench/bench_sequence.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._",
        "", "```sh", command, "```", "",
        *machine_lines(install_perf_analyzer(), 1), *busy_warning(load_before), "",
        f"Model `rnn` built in code: OUTPUT = STATE_OUT = tanh(INPUT W1 + STATE_IN W2), {WIDTH} wide, the state "
        "implicit (fed back by the server), a START control; max_batch_size 16, 2 CPU instances. "
        "`rnn_direct`: `direct` (32 slots, no window); `rnn_oldest`: `oldest`, 64 candidates, no window; "
        "`rnn_oldest_1ms`: the same with max_queue_delay_microseconds 1000. perf_analyzer --sequence-length 8 "
        f"over gRPC streaming, windows of {window_requests} requests, {repeats} repeats of the whole sweep (interleaved; "
        "each row is the repeat with the median requests/s, the range is the lowest and highest); average batch = inference_count / execution_count "
        "(statistics extension) over the run; server CPU = the server's utime + stime over the run / requests. "
        "perf_analyzer runs on the same cores. Ratios are against `rnn_direct` at the same concurrency.",
        "",
        "| model | concurrency | requests/s | range | x direct | p50 ms | p99 ms | average batch | server CPU us/request | x direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        base = baseline[r.concurrency]
        lines.append(
            f"| {r.model}{'' if r.stable else ' (windows not stable)'} | {r.concurrency} | {r.requests_per_s:,.0f} | "
            f"{r.spread[0]:,.0f}-{r.spread[1]:,.0f} | "
            f"{fmt(ratio(r.requests_per_s, base.requests_per_s), 2)} | {r.p50_us / 1000:,.2f} | {r.p99_us / 1000:,.2f} | "
            f"{r.average_batch:.1f} | {r.server_cpu_us:,.0f} | {fmt(ratio(r.server_cpu_us, base.server_cpu_us), 2)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--window-requests", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from lib.machine import load_average
    from lib.perf_analyzer import install_perf_analyzer
    from lib.report import write_section

    binary = install_perf_analyzer()
    rows: list[Row] = []
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-sequence-") as tmp:
        work = Path(tmp)
        repository = write_repository(work / "repo")
        server = start_server(repository, work / "server", ["--log-level", "warning", "--intra-op-threads", "1"])
        try:
            first_id = 1
            runs: dict[tuple[int, str], list[Row]] = {}
            for _ in range(args.repeats):
                for concurrency in CONCURRENCIES:
                    for model in STRATEGIES:
                        row = measure(binary, server, model, concurrency, args.window_requests, work, first_id)
                        runs.setdefault((concurrency, model), []).append(row)
                        first_id += 10**7  # perf_analyzer leaves sequences open: each run its own ids
            rows = [median_row(found) for found in runs.values()]
        finally:
            server.stop()
    command = "python bench/bench_sequence.py" + (
        f" --window-requests {args.window_requests}" if args.window_requests != 3000 else ""
    ) + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    write_section(
        args.out, markdown(rows, command, args.window_requests, args.repeats, load_before), BEGIN_MARKER, END_MARKER, HEADING
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

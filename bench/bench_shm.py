"""Shared memory vs sockets for large inputs: an image model fed FP32 8x3x224x224 requests (4.8 MB each).

Builds `image224` in code (GlobalAveragePool over the image, then Gemm 3 -> 1000 and Softmax: it reads
every pixel but costs little, so the transport is what is measured), serves it with --allow-client-shm
true, and drives it with perf_analyzer at concurrency 8 (-b 8: every request is one [8, 3, 224, 224]
tensor) over binary HTTP (the baseline), gRPC, and both with --shared-memory system. Server CPU per
request: the server process's utime + stime (/proc/<pid>/stat) over the run divided by the requests its
statistics extension counted over it (warm-up included on both sides). The shared-memory cases run twice:
on the default path (inputs read as views of the mapping, outputs copied in after the run) and on a
second server with --shm-io-binding true (tensors by pointer through ONNX Runtime's IO binding,
outputs written by ORT straight into the client's region: runtime/backends/binding.py).

    python bench/bench_shm.py                # ~1.5 minutes; rewrites its section of bench/RESULTS.md
    python bench/bench_shm.py --out /tmp/r.md --window-ms 1000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
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

MODEL = "image224"
BATCH = 8
CONCURRENCY = 8
BEGIN_MARKER = "<!-- bench_shm:begin -->"
END_MARKER = "<!-- bench_shm:end -->"
HEADING = "Shared memory: large inputs (bench/bench_shm.py)"
CONFIG = f"""\
name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: {BATCH}
input [ {{ name: "IMAGE" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }} ]
output [ {{ name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ 1000 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


@dataclass(frozen=True)
class Case:
    label: str
    protocol: str  # perf_analyzer -i
    shared_memory: bool
    io_binding: bool = False  # system shm through IO binding (a server with --shm-io-binding true)


CASES = (
    Case("HTTP binary", "http", False),
    Case("gRPC", "grpc", False),
    Case("HTTP + system shared memory", "http", True),
    Case("gRPC + system shared memory", "grpc", True),
    Case("HTTP + system shared memory, IO binding", "http", True, io_binding=True),
    Case("gRPC + system shared memory, IO binding", "grpc", True, io_binding=True),
)


def build_image_model(seed: int = 0) -> onnx.ModelProto:
    """IMAGE [batch, 3, 224, 224] -> GlobalAveragePool -> Flatten -> Gemm (3 -> 1000) -> Softmax -> PROBABILITIES."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["IMAGE"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["PROBABILITIES"], axis=1),
        ],
        MODEL,
        [helper.make_tensor_value_info("IMAGE", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("PROBABILITIES", TensorProto.FLOAT, ["batch", 1000])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((3, 1000)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal(1000).astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_repository(root: Path) -> Path:
    version = root / MODEL / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx.save(build_image_model(), str(version / "model.onnx"))
    (root / MODEL / "config.pbtxt").write_text(CONFIG)
    return root


def requests_served(server: RunningServer) -> int:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{MODEL}/stats", timeout=10) as response:
        entry = json.loads(response.read())["model_stats"][0]
    return int(entry["inference_stats"]["success"]["count"])


@dataclass
class Row:
    case: Case
    requests_per_s: float
    p50_us: float
    p99_us: float
    server_cpu_us: float
    stable: bool = True


def measure(binary: Path, server: RunningServer, case: Case, window_ms: int, work: Path) -> Row:
    from lib.perf_analyzer import STABILITY_ERROR, read_last_row

    report = work / "report.csv"
    report.unlink(missing_ok=True)
    url = server.grpc_url if case.protocol == "grpc" else server.http_url
    command = [
        str(binary), "-m", MODEL, "-u", url, "-i", case.protocol, "-b", str(BATCH),
        "--concurrency-range", str(CONCURRENCY), "--measurement-interval", str(window_ms),
        "--stability-percentage", "100", "--max-trials", "3", "-f", str(report),
        *(["--shared-memory", "system"] if case.shared_memory else []),
    ]  # fmt: skip
    pid = server.process.pid
    before, served_before = cpu_s(pid), requests_served(server)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    served = requests_served(server) - served_before
    used = cpu_s(pid) - before
    # Unstable windows on a busy machine still leave the last window's figures: kept, and marked.
    stable = completed.returncode == 0
    if completed.returncode not in (0, STABILITY_ERROR) or not report.exists():
        raise RuntimeError(f"perf_analyzer failed ({case.label}): {(completed.stdout + completed.stderr)[-800:]}")
    row = read_last_row(report)
    measured = Row(
        case, row["Inferences/Second"] / BATCH, row["p50 latency"], row["p99 latency"], 1e6 * used / max(1, served), stable
    )
    print(
        f"  {case.label}: {measured.requests_per_s:,.1f} requests/s, p50 {measured.p50_us / 1000:,.1f} ms, "
        f"server CPU {measured.server_cpu_us:,.0f} us/request",
        flush=True,
    )
    return measured


def markdown(rows: list[Row], command: str, window_ms: int, load_before: str) -> str:
    from lib.machine import busy_warning, machine_lines
    from lib.perf_analyzer import install_perf_analyzer
    from lib.report import fmt, ratio

    base = rows[0]
    lines = [
        f"_Written by `bench/bench_shm.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._",
        "", "```sh", command, "```", "",
        *machine_lines(install_perf_analyzer(), 1), *busy_warning(load_before), "",
        f"Model `{MODEL}` built in code (GlobalAveragePool -> Gemm 3 -> 1000 -> Softmax: it reads every pixel and "
        f"costs little, so the transport dominates), one instance, no dynamic batching. perf_analyzer -b {BATCH} at "
        f"concurrency {CONCURRENCY}: each request is one FP32 [{BATCH}, 3, 224, 224] tensor (4.8 MB) and a "
        f"[{BATCH}, 1000] answer; {window_ms} ms windows, random input data generated once. With "
        "`--shared-memory system` perf_analyzer writes inputs once into its regions and every request names "
        "them; the server reads them as views of its mapping and writes outputs into the client's region "
        "(rows marked IO binding: a second server with --shm-io-binding true binds the region's pointers "
        "in ONNX Runtime, which writes the output into the client's region itself). "
        "Server CPU per request: the server's utime + stime over the run / requests counted by the statistics "
        "extension. perf_analyzer runs on the same cores.",
        "",
        "| transport | requests/s | x HTTP binary | p50 ms | p99 ms | server CPU us/request | x HTTP binary |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r.case.label}{'' if r.stable else ' (windows not stable)'} | {r.requests_per_s:,.1f} | {fmt(ratio(r.requests_per_s, base.requests_per_s), 2)} | "
            f"{r.p50_us / 1000:,.1f} | {r.p99_us / 1000:,.1f} | {r.server_cpu_us:,.0f} | "
            f"{fmt(ratio(r.server_cpu_us, base.server_cpu_us), 2)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--window-ms", type=int, default=3000)
    args = parser.parse_args()
    from lib.machine import load_average
    from lib.perf_analyzer import install_perf_analyzer
    from lib.report import write_section

    binary = install_perf_analyzer()
    rows: list[Row] = []
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-shm-") as tmp:
        work = Path(tmp)
        repository = write_repository(work / "repo")
        flags = ["--log-level", "warning", "--allow-client-shm", "true", "--intra-op-threads", "1"]
        for binding in (False, True):
            server = start_server(repository, work / f"server-{binding}", [*flags, "--shm-io-binding", str(binding).lower()])
            try:
                for case in CASES:
                    if case.io_binding == binding:
                        rows.append(measure(binary, server, case, args.window_ms, work))
            finally:
                server.stop()
    command = "python bench/bench_shm.py" + (f" --window-ms {args.window_ms}" if args.window_ms != 3000 else "")
    write_section(args.out, markdown(rows, command, args.window_ms, load_before), BEGIN_MARKER, END_MARKER, HEADING)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

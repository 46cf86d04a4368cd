"""In-process onnxruntime baseline: what `session.run` alone costs, with no server in the way.

    python bench/inprocess.py MODEL.onnx --batch-sizes 1,8,64 --seconds 2 [--intra-op-threads 1] [--json]

For each batch size: random inputs of the model's dtypes and shapes (dynamic first dimension set to
the batch size, other dynamic dimensions to 1), a short warm-up, then back-to-back `session.run`
calls on one thread for the given time. Reports calls/s, rows/s and p50/p99/mean latency in us.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

Array = npt.NDArray[Any]
Result = dict[str, float | int]

WARMUP_CALLS = 20

# onnxruntime's type strings -> numpy dtypes, for the types benchmarks feed.
ORT_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
}


def open_session(model_path: str, intra_op_threads: int) -> ort.InferenceSession:
    """A CPU session; inter-op parallelism off so thread counts mean what they say."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def concrete_shape(shape: Sequence[Any], batch_size: int, input_name: str) -> list[int]:
    """The model's declared shape with the batch dimension (first) and other dynamic ones filled in."""
    dims: list[int] = []
    for index, dim in enumerate(shape):
        if isinstance(dim, int) and dim >= 0:
            dims.append(dim)
        else:
            dims.append(batch_size if index == 0 else 1)
    if dims and dims[0] != batch_size:
        raise ValueError(
            f"input {input_name!r} has a fixed first dimension {dims[0]}; cannot batch {batch_size}"
        )
    return dims


def random_array(dtype: np.dtype[Any], shape: list[int], rng: np.random.Generator) -> Array:
    """Random values of `dtype`: normal floats, small non-negative integers, fair booleans."""
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    return rng.integers(0, 10, size=shape).astype(dtype)


def random_inputs(
    session: ort.InferenceSession, batch_size: int, rng: np.random.Generator
) -> dict[str, Array]:
    """One feed dict for `session` at `batch_size`."""
    feeds: dict[str, Array] = {}
    for node in session.get_inputs():
        if node.type not in ORT_TO_NUMPY:
            raise ValueError(f"input {node.name!r}: onnxruntime type {node.type} is not supported here")
        shape = concrete_shape(node.shape, batch_size, node.name)
        feeds[node.name] = random_array(ORT_TO_NUMPY[node.type], shape, rng)
    return feeds


def time_calls(session: ort.InferenceSession, feeds: dict[str, Array], seconds: float) -> tuple[Array, float]:
    """Per-call latencies in ns, and the wall time in s, of back-to-back runs for about `seconds`."""
    for _ in range(WARMUP_CALLS):
        session.run(None, feeds)
    latencies: list[int] = []
    start = time.perf_counter_ns()
    deadline = start + int(seconds * 1e9)
    now = start
    while now < deadline:
        before = now
        session.run(None, feeds)
        now = time.perf_counter_ns()
        latencies.append(now - before)
    return np.asarray(latencies, dtype=np.int64), (now - start) / 1e9


def summarize(batch_size: int, latencies_ns: Array, elapsed_s: float) -> Result:
    """One result row: throughput in calls/s and rows/s, latency percentiles in us."""
    calls = int(latencies_ns.size)
    calls_per_s = calls / elapsed_s
    p50, p99 = np.percentile(latencies_ns, [50, 99]) / 1e3
    return {
        "batch_size": batch_size,
        "calls": calls,
        "seconds": round(elapsed_s, 3),
        "calls_per_s": round(calls_per_s, 1),
        "rows_per_s": round(calls_per_s * batch_size, 1),
        "p50_us": round(float(p50), 1),
        "p99_us": round(float(p99), 1),
        "mean_us": round(float(latencies_ns.mean()) / 1e3, 1),
    }


def measure_inprocess(
    model_path: str, batch_sizes: Sequence[int], seconds_per_point: float, intra_op_threads: int = 1
) -> list[Result]:
    """Throughput and latency of `session.run` at each batch size, on one calling thread."""
    session = open_session(model_path, intra_op_threads)
    rng = np.random.default_rng(0)
    results: list[Result] = []
    for batch_size in batch_sizes:
        feeds = random_inputs(session, batch_size, rng)
        latencies_ns, elapsed_s = time_calls(session, feeds, seconds_per_point)
        results.append(summarize(batch_size, latencies_ns, elapsed_s))
    return results


def format_table(results: list[Result]) -> str:
    columns = ["batch_size", "calls_per_s", "rows_per_s", "p50_us", "p99_us", "mean_us", "calls"]
    lines = ["  ".join(f"{name:>12}" for name in columns)]
    lines += ["  ".join(f"{row[name]:>12}" for name in columns) for row in results]
    return "\n".join(lines)


def parse_batch_sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="path to the .onnx file")
    parser.add_argument(
        "--batch-sizes", type=parse_batch_sizes, default=[1, 8, 64], help="comma list (1,8,64)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per batch size (2)")
    parser.add_argument("--intra-op-threads", type=int, default=1, help="onnxruntime intra-op threads (1)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = parser.parse_args(argv)
    results = measure_inprocess(args.model, args.batch_sizes, args.seconds, args.intra_op_threads)
    print(json.dumps(results, indent=2) if args.json else format_table(results))


if __name__ == "__main__":
    main()

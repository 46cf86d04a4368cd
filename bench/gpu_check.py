"""One short check of the CUDA path, for a machine with a GPU and onnxruntime-gpu installed.

    python bench/gpu_check.py [--seconds 2] [--json OUT.json]

1. backend: every example model, an identity model per V2 datatype and the wide MLP, each opened by
   runtime.backends.onnx with device "cuda" (required) and "cpu"; same random inputs through both;
   outputs compared (relative L2 error for floats, exact for the rest). IO binding must be in use.
2. server: `runtime serve --execution-provider cuda` on those models; the official tritonclient,
   HTTP and gRPC, must get the CPU session's answers.
3. timing: the wide MLP in-process on CUDA at batch 1 and 32, and the server over gRPC with 32
   concurrent clients, dynamic batching on and off.

Prints one table per part; exits 1 if any check fails. Figures are for the machine it ran on.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # tests/serving.py: start the real server on ephemeral ports

import onnxruntime as ort  # noqa: E402
from inprocess import ORT_TO_NUMPY, concrete_shape, random_array, summarize, time_calls  # noqa: E402
from tests.serving import start_server  # noqa: E402

from runtime.backends.onnx import CUDA, OnnxBackend, SessionSpec  # noqa: E402
from runtime.examples import build_wide_mlp, save_model, write_example_repository  # noqa: E402
from tests.models import build_identity  # noqa: E402

Array = npt.NDArray[Any]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
# With TF32 off (the server's default), cuBLAS/cuDNN and the CPU's kernels differ only in
# summation order: ~1e-7 relative. TF32 on gave 2.5e-4 to 5.6e-4 on these models (H100).
FLOAT_TOLERANCE = 1e-5
WIDE_BATCHING = "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 1000 }\n"
WIDE_UNBATCHED = "max_batch_size: 64\n"
failures: list[str] = []
device = "cuda"  # --device cpu dry-runs this script on a machine without a GPU


def check(condition: bool, message: str) -> bool:
    if not condition:
        failures.append(message)
        print(f"FAIL: {message}", flush=True)
    return condition


def build_repository(root: Path) -> Path:
    write_example_repository(root)
    for datatype in DATATYPES:
        save_model(build_identity(datatype), root, f"identity_{datatype.lower()}")
    instances = f"instance_group {{ count: 2 kind: {'KIND_GPU' if device == 'cuda' else 'KIND_CPU'} }}\n"
    save_model(build_wide_mlp(), root, "wide", config_pbtxt=WIDE_BATCHING + instances)
    save_model(build_wide_mlp(), root, "wide_unbatched", config_pbtxt=WIDE_UNBATCHED + instances)
    return root


def model_inputs(session: Any, batch: int, rng: np.random.Generator) -> dict[str, Array]:
    feeds: dict[str, Array] = {}
    for node in session.get_inputs():
        shape = concrete_shape(node.shape, batch, node.name)
        if node.type == "tensor(string)":
            count = int(np.prod(shape))
            feeds[node.name] = np.array([f"word {i} \u00e9" for i in range(count)], dtype=object).reshape(shape)
        else:
            feeds[node.name] = random_array(ORT_TO_NUMPY[node.type], shape, rng)
    return feeds


def difference(actual: Array, expected: Array) -> float:
    """Relative L2 error for floats; fraction of differing elements otherwise."""
    if actual.shape != expected.shape:
        return float("inf")
    if expected.dtype.kind == "f":
        expected64, actual64 = expected.astype(np.float64), actual.astype(np.float64)
        finite = np.isfinite(expected64)
        if not np.array_equal(finite, np.isfinite(actual64)):
            return float("inf")
        norm = float(np.linalg.norm(expected64[finite])) or 1.0
        return float(np.linalg.norm(actual64[finite] - expected64[finite])) / norm
    return float(np.mean(actual != expected)) if expected.size else 0.0


def tolerance(expected: Array) -> float:
    return FLOAT_TOLERANCE if expected.dtype.kind == "f" else 0.0


def check_backends(repository: Path) -> dict[str, dict[str, Array]]:
    """Part 1: CUDA session vs CPU session per model. Returns each model's inputs and CPU outputs."""
    print("\n## 1. backend: CUDA vs CPU sessions", flush=True)
    print(f"{'model':<24} {'providers':<40} {'io binding':<10} {'max difference':>14}")
    references: dict[str, dict[str, Array]] = {}
    rng = np.random.default_rng(7)
    for model_dir in sorted(path for path in repository.iterdir() if (path / "1" / "model.onnx").exists()):
        path = model_dir / "1" / "model.onnx"
        cuda = OnnxBackend(SessionSpec(path, device=device))
        cpu = OnnxBackend(SessionSpec(path, device="cpu"))
        session = cpu._sessions[0]
        feeds = model_inputs(session, 3, rng)
        names = [node.name for node in session.get_outputs()]
        expected = cpu.run(0, feeds, names)
        actual = cuda.run(0, feeds, names)
        worst = max(difference(actual[name], expected[name]) for name in names)
        if device == "cuda":
            check(cuda.providers[0] == CUDA, f"{model_dir.name}: CUDA is not the first provider ({cuda.providers})")
            strings = any(a.dtype == object for a in [*feeds.values(), *expected.values()])
            check(cuda._use_io_binding != strings, f"{model_dir.name}: IO binding {cuda._use_io_binding} with string tensors {strings}")
        check(
            all(difference(actual[n], expected[n]) <= tolerance(expected[n]) for n in names),
            f"{model_dir.name}: CUDA and CPU outputs differ (max {worst:.2e})",
        )
        print(f"{model_dir.name:<24} {','.join(cuda.providers):<40} {str(cuda._use_io_binding):<10} {worst:>14.2e}")
        references[model_dir.name] = {**{f"in:{k}": v for k, v in feeds.items()}, **{f"out:{k}": v for k, v in expected.items()}}
        cuda.close()
        cpu.close()
    return references


def check_server(server: Any, references: dict[str, dict[str, Array]]) -> None:
    """Part 2: the server on CUDA answers tritonclient over HTTP and gRPC like the CPU session."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    print("\n## 2. server on CUDA, tritonclient HTTP and gRPC", flush=True)
    print(f"{'model':<24} {'protocol':<6} {'max difference':>14}")
    clients = {"http": (httpclient, httpclient.InferenceServerClient(server.http_url)),
               "grpc": (grpcclient, grpcclient.InferenceServerClient(server.grpc_url))}
    skipped = {"image_classifier", "tabular_classifier"}  # their V2 inputs are raw (processing.json)
    for model, tensors in references.items():
        if model in skipped:
            continue
        for protocol, (module, client) in clients.items():
            inputs = []
            for key, array in tensors.items():
                if key.startswith("in:"):
                    datatype = "BYTES" if array.dtype == object else None
                    tensor = module.InferInput(key[3:], list(array.shape), datatype or _v2_datatype(array))
                    tensor.set_data_from_numpy(array.astype(object) if datatype else array)
                    inputs.append(tensor)
            outputs = [key[4:] for key in tensors if key.startswith("out:")]
            requested = [module.InferRequestedOutput(name) for name in outputs]
            try:
                result = client.infer(model, inputs, outputs=requested)
            except Exception as exc:
                check(False, f"{model} over {protocol}: {exc}")
                continue
            worst = 0.0
            for name in outputs:
                expected = tensors[f"out:{name}"]
                actual = result.as_numpy(name)
                if expected.dtype == object:
                    actual = np.array([v.decode() if isinstance(v, bytes) else v for v in actual.ravel()],
                                      dtype=object).reshape(actual.shape)
                    expected = np.array([v.decode() if isinstance(v, bytes) else v for v in expected.ravel()],
                                        dtype=object).reshape(expected.shape)
                error = difference(actual, expected)
                worst = max(worst, error)
                check(error <= tolerance(expected), f"{model}/{name} over {protocol}: differs by {error:.2e}")
            print(f"{model:<24} {protocol:<6} {worst:>14.2e}")
    metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    gpu_lines = [line for line in metrics.splitlines() if line.startswith("model_runtime_gpu_")]
    check(bool(gpu_lines) or device == "cpu", "no model_runtime_gpu_* metrics while serving on a GPU")
    for line in gpu_lines[:4]:
        print("  " + line)


def _v2_datatype(array: Array) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(array.dtype))


def _client_process(url: str, model: str, threads: int, start_at: float, stop_at: float, row: Array) -> tuple[list[float], list[str]]:
    """One load-generating process: `threads` closed-loop clients between two wall-clock instants."""
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    errors: list[str] = []

    def client_loop() -> None:
        client = grpcclient.InferenceServerClient(url)
        tensor = grpcclient.InferInput("INPUT", list(row.shape), "FP32")
        tensor.set_data_from_numpy(row)
        try:
            client.infer(model, [tensor])  # warm-up: connection and first execution
        except Exception as exc:
            errors.append(f"warm-up: {exc}")
            return
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < stop_at:
            before = time.perf_counter()
            try:
                client.infer(model, [tensor])
            except Exception as exc:
                errors.append(str(exc))
                return
            latencies.append(time.perf_counter() - before)

    workers = [threading.Thread(target=client_loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies, errors


def grpc_throughput(url: str, model: str, concurrency: int, seconds: float, row: Array) -> dict[str, float]:
    """Closed-loop load, one row per request: `concurrency` clients spread over several processes,
    so that the Python client's GIL does not cap what the server is asked to do."""
    processes = min(concurrency, 8)
    start_at = time.time() + 3.0
    stop_at = start_at + seconds
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
        results = pool.starmap(_client_process, [(url, model, n, start_at, stop_at, row) for n in shares])
    flat = np.array([value for latencies, _ in results for value in latencies]) * 1e6
    errors = [error for _, errs in results for error in errs]
    check(not errors, f"{model}: {len(errors)} failed requests under load: {errors[:1]}")
    p50, p99 = np.percentile(flat, [50, 99]) if flat.size else (float("nan"), float("nan"))
    return {"infer_per_s": flat.size / seconds, "p50_us": float(p50), "p99_us": float(p99)}


def timing(server: Any, repository: Path, seconds: float) -> list[dict[str, Any]]:
    """Part 3: in-process CUDA vs the server: wide MLP, and the example mlp (where the server's own cost shows)."""
    print("\n## 3. timing: wide MLP on CUDA", flush=True)
    rows: list[dict[str, Any]] = []
    backend = OnnxBackend(SessionSpec(repository / "wide" / "1" / "model.onnx", device=device))
    session = backend._sessions[0]
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        feeds = model_inputs(session, batch, rng)
        latencies, elapsed = time_calls(session, feeds, seconds)
        result = summarize(batch, latencies, elapsed)
        rows.append({"what": f"in-process session.run, batch {batch}", **result})
        # The server's own path: IO binding with host inputs and outputs.
        names = [node.name for node in session.get_outputs()]
        before = time.perf_counter()
        calls = 0
        while time.perf_counter() - before < seconds:
            backend.run(0, feeds, names)
            calls += 1
        rows.append({"what": f"in-process backend.run (IO binding), batch {batch}",
                     "calls_per_s": calls / (time.perf_counter() - before), "batch_size": batch})
    backend.close()
    feeds = model_inputs(session, 32, rng)
    for tf32 in (False, True):
        spec = SessionSpec(repository / "wide" / "1" / "model.onnx", device=device, cuda_tf32=tf32)
        timed = OnnxBackend(spec)
        latencies, elapsed = time_calls(timed._sessions[0], feeds, seconds)
        rows.append({"what": f"in-process session.run, batch 32, TF32 {'on' if tf32 else 'off'}",
                     **summarize(32, latencies, elapsed)})
        timed.close()
    for model, width in (("wide", 512), ("wide_unbatched", 512), ("mlp", 16)):
        row = np.random.default_rng(1).standard_normal((1, width)).astype(np.float32)
        for concurrency in (1, 32):
            result = grpc_throughput(server.grpc_url, model, concurrency, seconds, row)
            rows.append({"what": f"server gRPC {model}, concurrency {concurrency}", **result})
    for entry in rows:
        figures = ", ".join(f"{k}={v:,.1f}" for k, v in entry.items() if isinstance(v, float))
        print(f"  {entry['what']}: {figures}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each timed point")
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: dry run without a GPU")
    args = parser.parse_args()
    global device
    device = args.device
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}", flush=True)
    try:
        print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout.strip())
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"nvidia-smi: {exc}")
    if device == "cuda" and not check(CUDA in ort.get_available_providers(), "no CUDA execution provider here"):
        return 1
    with tempfile.TemporaryDirectory() as work:
        repository = build_repository(Path(work) / "repo")
        references = check_backends(repository)
        server = start_server(repository, Path(work) / "server", ["--execution-provider", device])
        try:
            check_server(server, references)
            rows = timing(server, repository, args.seconds)
        finally:
            code = server.stop()
            log = server.log()
        check(code == 0, f"server exited with {code}")
        check(device == "cpu" or "CUDAExecutionProvider" in log, "server log does not say it opened CUDA sessions")
    if args.json:
        args.json.write_text(json.dumps({"failures": failures, "timing": rows}, indent=2, default=str))
    print(f"\n{len(failures)} failure(s)" + "".join(f"\n  - {f}" for f in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

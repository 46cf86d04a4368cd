"""The CUDA shared-memory check, prepared for a machine with a GPU (NOT run yet: no GPU was at hand).

    python bench/gpu_check_cuda_shm.py [--json OUT.json] [--device 0] [--out bench/RESULTS.md]

With --out it writes its own section of that file (the machine, the command and every check's line);
a dry run never writes one.

Needs: an NVIDIA GPU, onnxruntime-gpu with its CUDA libraries (as bench/gpu_check.py), cuda-python
(`pip install cuda-python` matching the driver's CUDA; tritonclient.utils.cuda_shared_memory and the
server both use it; a lent machine without a package index needs its wheel carried, as bench/gpu_run.sh
carries the others), and perf_analyzer (bench/install_perf_analyzer.sh). About two minutes.

1. Serves, with --execution-provider cuda --allow-client-shm true, `simple` (INT32, on CUDA),
   `mlp_gpu` (the example MLP, KIND_GPU, dynamic batching) and `mlp_cpu` (the same, KIND_CPU: the
   server copies between the CUDA regions and its CPU session explicitly).
2. Over HTTP and gRPC, with tritonclient.utils.cuda_shared_memory: registers CUDA regions, puts the
   inputs there, asks for the outputs there, reads them back from the device and compares them with a
   CPU ONNX Runtime session of the same model file (exact for INT32, 1e-5 relative for FP32):
   - simple: both inputs in one region (offsets 0 and 64: the server copies device to device into an
     aligned buffer) and both outputs in another, then each tensor in its own region (bound in place);
   - mlp_gpu and mlp_cpu: 8 concurrent requests of 1-3 rows, each with its own input and output region
     (the dynamic batcher gathers them device to device and scatters the rows back).
3. perf_analyzer --shared-memory cuda on simple and mlp_gpu over HTTP and gRPC: exits 0 with throughput,
   no failed request in the model's statistics, and no region left registered.

Exits 1 if any check fails, 2 if the machine lacks something it needs. Prints one line per check.

`--dry-run` runs steps 1 and 2 on a machine without a GPU, to check this script itself: the server gets
tests/shm/fake_cudart.py for cuda-python (POSIX shared memory standing for device memory), the client a
stand-in for tritonclient.utils.cuda_shared_memory over the same objects, every model runs on the CPU,
and perf_analyzer is skipped. Its answers say nothing about CUDA.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # tests/serving.py: the real server on ephemeral ports
sys.path.insert(0, str(BENCH_DIR))

from runtime.backends.onnx import OnnxBackend, SessionSpec  # noqa: E402
from runtime.examples import build_mlp, build_simple, save_model  # noqa: E402
from runtime.examples.configs import MLP_CONFIG, SIMPLE_CONFIG  # noqa: E402
from tests.serving import RunningServer, start_server  # noqa: E402

FLOAT_TOLERANCE = 1e-5  # TF32 is off by default (bench/gpu_check.py)
results: list[dict[str, Any]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    results.append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def prerequisites() -> str | None:
    """What this machine lacks for the check, or None."""
    if not Path("/dev/nvidia0").exists():
        return "no NVIDIA GPU (/dev/nvidia0)"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    try:
        importlib.import_module("tritonclient.utils.cuda_shared_memory")
    except Exception as exc:  # RuntimeError without cuda-python
        return f"tritonclient.utils.cuda_shared_memory cannot load: {exc}"
    return None


class DryRunCudaShm:
    """--dry-run: tritonclient.utils.cuda_shared_memory's calls over POSIX shared memory, with raw handles the
    server's fake cuda-python maps (tests/shm/fake_cudart.py)."""

    def __init__(self) -> None:
        import tritonclient.utils.shared_memory as system

        self.system = system
        self.keys: dict[int, tuple[str, int]] = {}

    def create_shared_memory_region(self, name: str, byte_size: int, device_id: int) -> Any:
        handle = self.system.create_shared_memory_region(name, f"/{name}", byte_size)
        self.keys[id(handle)] = (f"/{name}", device_id)
        return handle

    def get_raw_handle(self, handle: Any) -> bytes:
        import base64

        from tests.shm.fake_cudart import handle_for_object

        return base64.b64encode(handle_for_object(*self.keys[id(handle)]))

    def set_shared_memory_region(self, handle: Any, values: list[Any]) -> None:
        self.system.set_shared_memory_region(handle, values)

    def get_contents_as_numpy(self, handle: Any, dtype: Any, shape: list[int]) -> Any:
        return self.system.get_contents_as_numpy(handle, dtype, shape)

    def destroy_shared_memory_region(self, handle: Any) -> None:
        self.system.destroy_shared_memory_region(handle)


def write_repository(root: Path, dry_run: bool = False) -> dict[str, Path]:
    paths = {"simple": save_model(build_simple(), root, "simple", config_pbtxt=SIMPLE_CONFIG)}
    for name, kind in (("mlp_gpu", "KIND_CPU" if dry_run else "KIND_GPU"), ("mlp_cpu", "KIND_CPU")):
        config = MLP_CONFIG.replace('name: "mlp"', f'name: "{name}"').replace("KIND_CPU", kind)
        paths[name] = save_model(build_mlp(), root, name, config_pbtxt=config)
    return paths


class Reference:
    """CPU ONNX Runtime sessions of the served model files: the answers to compare with."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.backends = {name: OnnxBackend(SessionSpec(model_path=path, device="cpu")) for name, path in paths.items()}

    def run(self, model: str, inputs: dict[str, np.ndarray[Any, Any]], outputs: list[str]) -> dict[str, np.ndarray[Any, Any]]:
        return self.backends[model].run(0, inputs, outputs)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()


def same(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> tuple[bool, str]:
    if got.shape != want.shape:
        return False, f"shape {list(got.shape)} != {list(want.shape)}"
    if want.dtype.kind == "f":
        error = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12)))
        return error <= FLOAT_TOLERANCE, f"max relative error {error:.2e}"
    return bool(np.array_equal(got, want)), "exact" if np.array_equal(got, want) else "differs"


class Session:
    """One protocol's client and the CUDA regions it made (unregistered and destroyed at close)."""

    def __init__(self, server: RunningServer, protocol: str, device: int, dry_run: bool = False) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.cudashm: Any = DryRunCudaShm() if dry_run else importlib.import_module("tritonclient.utils.cuda_shared_memory")
        self.protocol = protocol
        self.device = device
        self.module: Any = grpcclient if protocol == "grpc" else httpclient
        self.url = server.grpc_url if protocol == "grpc" else server.http_url
        self.client: Any = self.module.InferenceServerClient(self.url)
        self.handles: list[Any] = []
        self.count = 0

    def region(self, byte_size: int, values: list[np.ndarray[Any, Any]] | None = None) -> tuple[str, Any]:
        self.count += 1
        name = f"gpu_check_{self.protocol}_{self.count}"
        handle = self.cudashm.create_shared_memory_region(name, byte_size, self.device)
        self.handles.append(handle)
        if values:
            self.cudashm.set_shared_memory_region(handle, values)
        self.client.register_cuda_shared_memory(name, self.cudashm.get_raw_handle(handle), self.device, byte_size)
        return name, handle

    def infer(
        self, model: str, inputs: list[tuple[str, str, list[int], str, int, int]], outputs: list[tuple[str, str, int, int]],
        client: Any = None,
    ) -> Any:  # fmt: skip
        tensors = []
        for name, datatype, shape, region, byte_size, offset in inputs:
            tensor = self.module.InferInput(name, shape, datatype)
            tensor.set_shared_memory(region, byte_size, offset)
            tensors.append(tensor)
        wanted = []
        for name, region, byte_size, offset in outputs:
            output = self.module.InferRequestedOutput(name)
            output.set_shared_memory(region, byte_size, offset)
            wanted.append(output)
        return (client or self.client).infer(model, tensors, outputs=wanted)

    def read(self, handle: Any, dtype: Any, shape: list[int], offset: int = 0) -> np.ndarray[Any, Any]:
        count = int(np.prod(shape))
        flat = self.cudashm.get_contents_as_numpy(handle, dtype, [offset // np.dtype(dtype).itemsize + count])
        return np.asarray(flat[offset // np.dtype(dtype).itemsize :]).reshape(shape)

    def close(self) -> None:
        self.client.unregister_cuda_shared_memory()
        for handle in self.handles:
            self.cudashm.destroy_shared_memory_region(handle)
        self.client.close()


def simple_checks(session: Session, reference: Reference) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 7, dtype=np.int32)
    want = reference.run("simple", {"INPUT0": a, "INPUT1": b}, ["OUTPUT0", "OUTPUT1"])
    label = f"{session.protocol} simple"
    try:  # one region each way, tensors at offsets 0 and 64
        inputs, _ = session.region(128, [a, b])
        outputs, out_handle = session.region(128)
        session.infer(
            "simple",
            [("INPUT0", "INT32", [1, 16], inputs, 64, 0), ("INPUT1", "INT32", [1, 16], inputs, 64, 64)],
            [("OUTPUT0", outputs, 64, 0), ("OUTPUT1", outputs, 64, 64)],
        )
        for name, offset in (("OUTPUT0", 0), ("OUTPUT1", 64)):
            ok, detail = same(session.read(out_handle, np.int32, [1, 16], offset), want[name])
            check(f"{label}: {name} at offset {offset} of one region", ok, detail)
    except Exception as exc:
        check(f"{label}: tensors at offsets in one region", False, repr(exc)[:400])
    try:  # a region per tensor: bound in place
        regions = [session.region(64, [value]) for value in (a, b)]
        out = [session.region(64) for _ in range(2)]
        session.infer(
            "simple",
            [("INPUT0", "INT32", [1, 16], regions[0][0], 64, 0), ("INPUT1", "INT32", [1, 16], regions[1][0], 64, 0)],
            [("OUTPUT0", out[0][0], 64, 0), ("OUTPUT1", out[1][0], 64, 0)],
        )
        for (name, _), (_, handle) in zip((("OUTPUT0", 0), ("OUTPUT1", 0)), out):
            ok, detail = same(session.read(handle, np.int32, [1, 16]), want[name])
            check(f"{label}: {name} in its own region", ok, detail)
    except Exception as exc:
        check(f"{label}: a region per tensor", False, repr(exc)[:400])


def batched_checks(session: Session, reference: Reference, model: str, server: RunningServer) -> None:
    rng = np.random.default_rng(17)
    cases = []
    for rows in (1, 2, 3, 1, 2, 3, 1, 2):
        data = rng.standard_normal((rows, 16)).astype(np.float32)
        inputs, _ = session.region(data.nbytes, [data])
        outputs, handle = session.region(rows * 4 * 4)
        cases.append((data, inputs, outputs, handle))
    before = executions(server, model)
    errors: list[str] = []
    start = threading.Barrier(len(cases))

    def one(case: tuple[Any, ...]) -> None:
        data, inputs, outputs, _ = case
        # A client per thread: tritonclient's HTTP client is gevent-based and belongs to the thread that made it.
        client = session.module.InferenceServerClient(session.url)
        try:
            start.wait()
            session.infer(
                model, [("INPUT", "FP32", list(data.shape), inputs, data.nbytes, 0)],
                [("PROBABILITIES", outputs, data.shape[0] * 16, 0)], client,
            )  # fmt: skip
        except Exception as exc:
            errors.append(repr(exc)[:300])
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(case,)) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    label = f"{session.protocol} {model}"
    if not check(f"{label}: 8 concurrent requests in CUDA regions", not errors, "; ".join(errors)):
        return
    worst = 0.0
    all_ok = True
    for data, _, _, handle in cases:
        want = reference.run(model, {"INPUT": data}, ["PROBABILITIES"])["PROBABILITIES"]
        ok, detail = same(session.read(handle, np.float32, [data.shape[0], 4]), want)
        all_ok &= ok
        if detail.startswith("max relative error"):
            worst = max(worst, float(detail.rsplit(" ", 1)[1]))
    batches = executions(server, model) - before
    check(f"{label}: every answer equals the CPU's", all_ok, f"max relative error {worst:.2e}; {batches} executions for 8 requests")


def executions(server: RunningServer, model: str) -> int:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/stats", timeout=10) as response:
        return int(json.loads(response.read())["model_stats"][0]["execution_count"])


def providers(server: RunningServer, model: str) -> str:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}", timeout=10) as response:
        metadata = json.loads(response.read())
    return str(metadata.get("execution_providers", metadata.get("parameters", "?")))


def perf_analyzer_checks(server: RunningServer, work: Path) -> None:
    from lib.perf_analyzer import install_perf_analyzer, read_last_row

    try:
        binary = install_perf_analyzer()
    except Exception as exc:
        check("perf_analyzer installed", False, repr(exc)[:300])
        return
    import tritonclient.http as httpclient

    for model in ("simple", "mlp_gpu"):
        for protocol in ("http", "grpc"):
            report = work / f"pa_{model}_{protocol}.csv"
            url = server.grpc_url if protocol == "grpc" else server.http_url
            command = [
                str(binary), "-m", model, "-u", url, "-i", protocol, "--shared-memory", "cuda",
                "--concurrency-range", "4", "--measurement-interval", "1500", "--max-trials", "3",
                "--stability-percentage", "100", "-f", str(report),
            ]  # fmt: skip
            completed = subprocess.run(command, capture_output=True, text=True, timeout=180)
            label = f"perf_analyzer --shared-memory cuda -m {model} -i {protocol}"
            if not check(label, completed.returncode in (0, 2) and report.exists(), (completed.stdout + completed.stderr)[-600:] if completed.returncode not in (0, 2) else ""):
                continue
            row = read_last_row(report)
            client = httpclient.InferenceServerClient(server.http_url)
            try:
                stats = client.get_inference_statistics(model)["model_stats"][0]
                failed = int(stats["inference_stats"]["fail"]["count"])
                left = client.get_cuda_shared_memory_status()
            finally:
                client.close()
            check(
                f"{label}: throughput, no failure, nothing left registered",
                row["Inferences/Second"] > 0 and failed == 0 and not left,
                f"{row['Inferences/Second']:,.0f} infer/s, p50 {row['p50 latency'] / 1000:.2f} ms, {failed} failed, {len(left)} regions left",
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", type=int, default=0, help="CUDA device of the regions and the models")
    parser.add_argument("--dry-run", action="store_true", help="check this script on a machine without a GPU (see above)")
    parser.add_argument("--out", type=Path, help="write this run's section of that file (bench/RESULTS.md)")
    args = parser.parse_args()
    missing = None if args.dry_run else prerequisites()
    if missing:
        print(f"cannot run the CUDA shared-memory check here: {missing}")
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-check-cuda-shm-") as tmp:
        work = Path(tmp)
        paths = write_repository(work / "repo", args.dry_run)
        reference = Reference(paths)
        provider = "cpu" if args.dry_run else "cuda"
        flags = ["--log-level", "warning", "--allow-client-shm", "true", "--execution-provider", provider, "--gpu-device-id", str(args.device)]
        env = None
        if args.dry_run:
            from tests.shm.fake_cudart import install_for_subprocesses

            env = install_for_subprocesses(work / "fake-cuda-site")
        server = start_server(work / "repo", work / "server", flags, env=env)
        try:
            for model in paths:
                print(f"     {model}: execution providers {providers(server, model)}", flush=True)
            for protocol in ("http", "grpc"):
                session = Session(server, protocol, args.device, args.dry_run)
                try:
                    simple_checks(session, reference)
                    batched_checks(session, reference, "mlp_gpu", server)
                    batched_checks(session, reference, "mlp_cpu", server)
                finally:
                    session.close()
            if args.dry_run:
                print("     perf_analyzer --shared-memory cuda: skipped in a dry run (it needs a GPU)")
            else:
                perf_analyzer_checks(server, work)
            check("server still serving", server.process.poll() is None)
        finally:
            server.stop()
            reference.close()
    failed = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=2))
    if args.out and not args.dry_run:
        write_results(args.out, args.device, len(failed))
    return 1 if failed else 0


def write_results(out: Path, device: int, failed: int) -> None:
    import time

    import onnxruntime as ort
    from lib.report import write_section

    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader", f"--id={device}"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:  # no nvidia-smi on the path
        gpu = ""
    lines = [
        f"_Written by `bench/gpu_check_cuda_shm.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._",
        "", "```sh", f"python bench/gpu_check_cuda_shm.py --device {device} --out {out}", "```", "",
        f"- GPU {device}: {gpu or 'unknown'}; onnxruntime {ort.__version__}",
        f"- {len(results) - failed} checks passed, {failed} failed", "",
        *(f"- {'ok' if r['ok'] else '**FAIL**'}: {r['check']}{': ' + r['detail'] if r['detail'] else ''}" for r in results),
    ]  # fmt: skip
    write_section(
        out, "\n".join(lines) + "\n", "<!-- gpu_check_cuda_shm:begin -->", "<!-- gpu_check_cuda_shm:end -->",
        "CUDA shared memory on a GPU (bench/gpu_check_cuda_shm.py)",
    )
    print(f"written to {out}")


if __name__ == "__main__":
    raise SystemExit(main())

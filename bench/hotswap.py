"""Hot-swap figures for bench/RESULTS.md: p99 latency during swaps vs steady state, RSS after
20 load/unload cycles, and RSS and thread count after 30 same-version swaps.

    python bench/hotswap.py [--seconds 8] [--cycles 20]

Starts a real server (explicit mode) on the example MLP in two versions, drives it from client
threads over gRPC, swaps v1 <-> v2 repeatedly, and reads the server's RSS from /proc.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/serving.py
from lib.machine import proc_status  # noqa: E402
from tests.serving import running_server  # noqa: E402

from runtime.examples import build_mlp, save_model  # noqa: E402

CONFIG = "max_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 500 }\n"


def rss_bytes(pid: int) -> int:
    kib = proc_status(pid, "VmRSS")
    if kib is None:
        raise RuntimeError("no VmRSS")
    return kib * 1024


def thread_count(pid: int) -> int:
    threads = proc_status(pid, "Threads")
    if threads is None:
        raise RuntimeError("no Threads")
    return threads


def drive(url: str, stop: threading.Event, latencies: list[tuple[float, float]], errors: list[str]) -> None:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("INPUT", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    while not stop.is_set():
        started = time.monotonic()
        try:
            client.infer("mlp", [tensor])
        except Exception as exc:
            errors.append(str(exc))
            continue
        latencies.append((started, time.monotonic() - started))


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="steady-state and swapping phase length each")
    parser.add_argument("--cycles", type=int, default=20, help="load/unload cycles for the RSS figure")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--swap-every", type=float, default=0.5, help="seconds between swaps")
    parser.add_argument("--swaps", type=int, default=30, help="same-version swaps (config change) for the threads/RSS figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        save_model(build_mlp(seed=0), repo, "mlp", 1, config_pbtxt=CONFIG)
        save_model(build_mlp(seed=1), repo, "mlp", 2)
        with running_server(repo, Path(tmp) / "srv", ["--model-control-mode", "explicit", "--load-model", "mlp"]) as server:
            admin = grpcclient.InferenceServerClient(server.grpc_url)
            stop = threading.Event()
            latencies: list[tuple[float, float]] = []
            errors: list[str] = []
            threads = [threading.Thread(target=drive, args=(server.grpc_url, stop, latencies, errors)) for _ in range(args.clients)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            steady_from = time.monotonic()
            time.sleep(args.seconds)
            swap_from = time.monotonic()
            swaps = 0
            while time.monotonic() - swap_from < args.seconds:
                target = 1 + swaps % 2
                admin.load_model("mlp", config=json.dumps({
                    "max_batch_size": 32, "dynamic_batching": {"max_queue_delay_microseconds": 500},
                    "version_policy": {"specific": {"versions": [target]}},
                }))
                swaps += 1
                time.sleep(args.swap_every)
            swap_to = time.monotonic()
            stop.set()
            for thread in threads:
                thread.join()
            steady = [lat for t, lat in latencies if steady_from <= t < swap_from]
            swapping = [lat for t, lat in latencies if swap_from <= t < swap_to]

            admin.load_model("mlp", config=json.dumps({"max_batch_size": 32, "version_policy": {"specific": {"versions": [1]}}}))
            before = rss_bytes(server.process.pid)
            for _ in range(args.cycles):
                admin.unload_model("mlp")
                admin.load_model("mlp", config=json.dumps({"max_batch_size": 32, "version_policy": {"specific": {"versions": [1]}}}))
            after = rss_bytes(server.process.pid)
            # Swaps, not unloads: each load changes a harmless field, so version 1 is loaded anew
            # beside the serving one and the old one retired.
            swap_rss_before, swap_threads_before = rss_bytes(server.process.pid), thread_count(server.process.pid)
            for swap in range(args.swaps):
                admin.load_model("mlp", config=json.dumps({
                    "max_batch_size": 32, "dynamic_batching": {"max_queue_delay_microseconds": 100 + swap % 2},
                    "version_policy": {"specific": {"versions": [1]}},
                }))
            swap_rss_after, swap_threads_after = rss_bytes(server.process.pid), thread_count(server.process.pid)
    print("| phase | requests | p50 (ms) | p99 (ms) |")
    print("|---|---|---|---|")
    print(f"| steady state | {len(steady)} | {np.median(steady) * 1e3:.2f} | {p99(steady) * 1e3:.2f} |")
    print(f"| during {swaps} swaps | {len(swapping)} | {np.median(swapping) * 1e3:.2f} | {p99(swapping) * 1e3:.2f} |")
    print(f"\nfailed requests: {len(errors)}")
    print(f"RSS before {args.cycles} unload/load cycles: {before / 2**20:.1f} MiB; after: {after / 2**20:.1f} MiB "
          f"(delta {(after - before) / 2**20:+.1f} MiB)")
    print(f"RSS before {args.swaps} swaps: {swap_rss_before / 2**20:.1f} MiB; after: {swap_rss_after / 2**20:.1f} MiB "
          f"(delta {(swap_rss_after - swap_rss_before) / 2**20:+.1f} MiB); "
          f"threads {swap_threads_before} -> {swap_threads_after}")


if __name__ == "__main__":
    main()

"""Prove perf_analyzer can drive a V2 HTTP server: build the MLP, start the naive server, measure.

    python bench/smoke_perf_analyzer.py [--seconds-per-window 2] [--concurrency 1:4:2] [--keep DIR]

Installs perf_analyzer first if needed (bench/install_perf_analyzer.sh). Runs it over HTTP with
binary tensors (its default) and with JSON tensors, each with `-f report.csv`, and prints the rows.
Exits non-zero if the server does not come up or any perf_analyzer run fails.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lib.perf_analyzer import JSON_TENSORS, install_perf_analyzer
from lib.servers import free_port
from mlp_model import build_mlp

BENCH_DIR = Path(__file__).resolve().parent
MODEL_NAME = "mlp"
READY_TIMEOUT_S = 30.0

# Variants checked by default: (label, extra perf_analyzer flags).
VARIANTS: list[tuple[str, list[str]]] = [
    ("http-binary", []),
    ("http-json", JSON_TENSORS),
]


def wait_until_ready(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"naive server exited with {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"naive server not ready on port {port} after {READY_TIMEOUT_S} s")


@contextmanager
def naive_server(model_path: Path, port: int) -> Iterator[None]:
    """The naive server on `port` for the duration of the block."""
    command = [sys.executable, str(BENCH_DIR / "naive_server.py"), "--model", str(model_path)]
    command += ["--name", MODEL_NAME, "--port", str(port)]
    server = subprocess.Popen(command)
    try:
        wait_until_ready(port, server)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


def read_perf_csv(path: Path) -> list[dict[str, float]]:
    """perf_analyzer's `-f` report: one row per concurrency, every column a number (latencies in us)."""
    with path.open(newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def run_perf_analyzer(
    binary: Path, port: int, flags: list[str], concurrency: str, window_ms: int, report: Path
) -> list[dict[str, float]]:
    command = [str(binary), "-m", MODEL_NAME, "-u", f"localhost:{port}", "-i", "http"]
    command += ["--concurrency-range", concurrency, "--measurement-interval", str(window_ms)]
    # A small shared box is noisy: the default 10 % stability rule often never converges.
    command += ["--stability-percentage", "25", "--max-trials", "15", "-f", str(report), *flags]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return read_perf_csv(report)


def print_rows(label: str, rows: list[dict[str, float]]) -> None:
    for row in rows:
        print(
            f"{label:12} concurrency={row['Concurrency']:.0f} infer/s={row['Inferences/Second']:.0f}"
            f" p50={row['p50 latency']:.0f}us p99={row['p99 latency']:.0f}us"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds-per-window", type=float, default=2.0)
    parser.add_argument("--concurrency", default="1:4:2", help="perf_analyzer --concurrency-range (1:4:2)")
    parser.add_argument("--keep", type=Path, help="write model and CSVs here and keep them")
    args = parser.parse_args(argv)
    binary = install_perf_analyzer()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="pa-smoke-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        model_path = build_mlp(workdir / "mlp.onnx")
        port = free_port()
        window_ms = int(args.seconds_per_window * 1000)
        summary: list[tuple[str, list[dict[str, float]]]] = []
        with naive_server(model_path, port):
            for label, flags in VARIANTS:
                report = workdir / f"{label}.csv"
                summary.append(
                    (label, run_perf_analyzer(binary, port, flags, args.concurrency, window_ms, report))
                )
        for label, rows in summary:
            print_rows(label, rows)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

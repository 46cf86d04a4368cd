"""Servers a benchmark starts besides model-runtime (tests/serving.py starts that): the naive server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lib.scrape import fetch

BENCH_DIR = Path(__file__).resolve().parents[1]


READY_TIMEOUT_S = 60.0


def wait_ready(http_url: str, models: Sequence[str], process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(models)
    while pending:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            fetch(f"http://{http_url}/v2/models/{pending[0]}/ready", timeout_s=2)
            pending.pop(0)
            continue
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"models {pending} not ready on {http_url} after {READY_TIMEOUT_S} s")
        time.sleep(0.2)


def free_port() -> int:
    """A port free right now (racy; bench/naive_server.py cannot report a port it picked itself)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def naive_server(
    model_path: Path, name: str, max_batch_size: int, threads: int, log_path: Path
) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, str(BENCH_DIR / "naive_server.py"), "--model", str(model_path), "--name", name,
        "--port", str(port), "--max-batch-size", str(max_batch_size), "--intra-op-threads", str(threads),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    try:
        wait_ready(url, [name], process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

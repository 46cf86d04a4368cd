"""Start a real model-runtime server in its own process, on ephemeral ports, for tests and benchmarks.

The server binds port 0 itself and reports the ports it got through --ports-file, so there is
no pick-a-free-port-then-close race. Its own process also keeps its protobuf registrations
apart from tritonclient's.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    import tritonclient.http as httpclient


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> dict[str, list[int]]:
        """With --workers N: the pids of the supervisor's children, {"engine": [pid], "frontend": [pids by index]}."""
        found: dict[str, dict[int, int]] = {"engine": {}, "frontend": {}}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) != self.process.pid:
                continue
            if b"_engine" in argv:
                found["engine"][0] = int(entry.name)
            elif b"_frontend" in argv:
                found["frontend"][int(argv[argv.index(b"--index") + 1])] = int(entry.name)
        return {role: [pids[i] for i in sorted(pids)] for role, pids in found.items()}

    def pids(self) -> list[int]:
        """Every process of this server: the one process, or the supervisor, the engine and the front ends."""
        children = self.children()
        return [self.process.pid, *children["engine"], *children["frontend"]]

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server did not stop within {timeout_s}s on SIGTERM; log:\n{self.log()[-4000:]}")


def start_server(
    repository: Path | None,
    work_dir: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    startup_timeout_s: float = 90.0,
    workers: int = 1,
) -> RunningServer:
    work_dir.mkdir(parents=True, exist_ok=True)
    ports_file = work_dir / "ports.json"
    ports_file.unlink(missing_ok=True)
    log_path = work_dir / "server.log"
    args = [
        sys.executable, "-m", "runtime", "serve",
        "--http-address", "127.0.0.1", "--http-port", "0",
        "--grpc-address", "127.0.0.1", "--grpc-port", "0",
        "--metrics-address", "127.0.0.1", "--metrics-port", "0",
        "--ports-file", str(ports_file),
        "--exit-timeout-secs", "20",
    ]
    if repository is not None:
        args += ["--model-repository", str(repository)]
    else:
        args += ["--example-repository", str(work_dir / "examples")]
    if workers != 1:
        args += ["--workers", str(workers)]
    args += list(extra_args)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=work_dir
        )
    deadline = time.monotonic() + startup_timeout_s
    while not ports_file.exists():
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}; log:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"server did not start in {startup_timeout_s}s; log:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.05)
    ports = json.loads(ports_file.read_text())
    return RunningServer(process, ports["http"], ports["grpc"], ports["metrics"], log_path)


@contextlib.contextmanager
def running_server(
    repository: Path | None,
    work_dir: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    workers: int = 1,
) -> Iterator[RunningServer]:
    """A server for the block; `workers` > 1 runs it as a supervisor, an engine and that many front ends."""
    server = start_server(repository, work_dir, extra_args, env, workers=workers)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def thread_http_client(url: str, **options: object) -> Iterator["httpclient.InferenceServerClient"]:
    """A tritonclient HTTP client for use inside one worker thread.

    The client is gevent-based: it must be closed by the thread that made it, and its __del__ closes
    it again wherever the garbage collector runs, which fails outside that thread (an unraisable
    exception that then fails whichever test is running). Closed here, on exit, and made inert for
    __del__.
    """
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, **options)
    try:
        yield client
    finally:
        client.close()
        client.close = lambda: None  # type: ignore[method-assign]

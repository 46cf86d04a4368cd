"""A real Prometheus (Debian's `prometheus` package; .ci/run installs it) for the monitoring tests.

`binary(name)` finds prometheus or promtool: the tests skip, saying why, where it is absent, except in
CI (CI set), where its absence fails them. `running_prometheus` starts one on port 0 with a
config written for the test and finds the port it bound from /proc, so no port is guessed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install prometheus; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the real-Prometheus tests")
        pytest.skip(message)
    return path


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def _listening_port(pid: int) -> int | None:
    """The TCP port process `pid` listens on (its socket inodes matched in /proc/net/tcp*)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: the query is wrong; its error is in the body
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now (AssertionError with Prometheus's error otherwise)."""
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}: {body.get('errorType')}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def names(self) -> set[str]:
        body = self.api("label/__name__/values")
        return set(body["data"])


@contextlib.contextmanager
def running_prometheus(
    work_dir: Path, targets: list[str], scrape_interval: str = "200ms", labels: dict[str, str] | None = None
) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (host:port, /metrics) every `scrape_interval`, job "model-runtime",
    with `labels` on every series (as Kubernetes discovery would add namespace and pod)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    group: dict[str, Any] = {"targets": targets}
    if labels:
        group["labels"] = labels
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": "model-runtime", "static_configs": [group]}],
    }
    config_path = work_dir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = work_dir / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={work_dir / 'data'}",
                "--web.listen-address=127.0.0.1:0",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
        )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not start; log:\n{log_path.read_text()[-3000:]}")
            port = _listening_port(process.pid)
            time.sleep(0.05)
        prometheus = Prometheus(process, port, log_path)
        while not _ready(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready; log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False

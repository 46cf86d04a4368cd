"""perf_analyzer --shared-memory against the server (issue 14).

`--shared-memory system` on `simple` and the example mlp over HTTP and gRPC runs to completion: perf_analyzer
unregisters every system and CUDA region at start, registers its own regions for every input and output,
has all its concurrent requests read and write them, and unregisters them all at exit.
`--shared-memory cuda` without a GPU fails cleanly: a non-zero exit, no crash, and the server still serving.
perf_analyzer is found, or the module skipped, as in tests/test_perf_analyzer.py.
"""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from tests.serving import RunningServer, running_server
from tests.test_perf_analyzer import run_perf_analyzer, SHORT_RUN, read_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(perf_analyzer: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(None, tmp_path_factory.mktemp("shm-perf-server"), extra_args=["--allow-client-shm", "true"]) as running:
        yield running


def run(perf_analyzer: Path, server: RunningServer, model: str, protocol: str, memory: str, report: Path) -> subprocess.CompletedProcess[str]:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    command = [str(perf_analyzer), "-m", model, "-u", url, "-i", protocol, "--shared-memory", memory, *SHORT_RUN, "-f", str(report)]
    return run_perf_analyzer(command)


@pytest.mark.parametrize("model", ["simple", "mlp"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory_runs_to_completion(
    perf_analyzer: Path, server: RunningServer, tmp_path: Path, model: str, protocol: str
) -> None:
    report = tmp_path / "report.csv"
    completed = run(perf_analyzer, server, model, protocol, "system", report)
    output = (completed.stdout + completed.stderr)[-4000:]
    assert completed.returncode == 0, f"perf_analyzer --shared-memory system exited {completed.returncode}:\n{output}"
    rows = read_rows(report)
    assert rows and any(float(row["Inferences/Second"]) > 0 for row in rows), f"no throughput in {rows}\n{output}"
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.get_system_shared_memory_status() == []  # it unregistered what it registered
        stats = client.get_inference_statistics(model)["model_stats"][0]
        assert int(stats["inference_stats"]["fail"]["count"]) == 0
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cuda_shared_memory_fails_cleanly_without_a_gpu(
    perf_analyzer: Path, server: RunningServer, tmp_path: Path, protocol: str
) -> None:
    if Path("/dev/nvidia0").exists():
        pytest.skip("a GPU is present: this is the check for machines without one")
    completed = run(perf_analyzer, server, "simple", protocol, "cuda", tmp_path / "report.csv")
    output = completed.stdout + completed.stderr
    assert completed.returncode > 0, f"expected a clean failure, got exit {completed.returncode}:\n{output[-4000:]}"
    assert "error" in output.lower()
    assert server.process.poll() is None
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_server_live() and client.get_cuda_shared_memory_status() == []
    finally:
        client.close()

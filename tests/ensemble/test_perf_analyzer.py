"""perf_analyzer runs to completion on an ensemble (issue 17), over HTTP and gRPC, as the examples'
test does (tests/test_perf_analyzer.py, whose helpers find perf_analyzer and skip, saying why, when
it cannot run). perf_analyzer reads the ensemble's config and its composing models' configs and
statistics, so this also checks that those answers are what it expects."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ensemble.models import write_repository
from tests.serving import RunningServer, running_server
from tests.test_perf_analyzer import run_perf_analyzer, SHORT_RUN, read_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(perf_analyzer: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = write_repository(tmp_path_factory.mktemp("ensemble-perf-repo"))
    with running_server(repository, tmp_path_factory.mktemp("ensemble-perf-server")) as running:
        yield running


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs_on_the_ensemble(perf_analyzer: Path, server: RunningServer, tmp_path: Path, protocol: str) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    report = tmp_path / "report.csv"
    command = [str(perf_analyzer), "-m", "pipeline", "-u", url, "-i", protocol, "-b", "2", *SHORT_RUN, "-f", str(report)]
    completed = run_perf_analyzer(command)
    output = (completed.stdout + completed.stderr)[-4000:]
    assert completed.returncode == 0, f"{' '.join(command)} exited {completed.returncode}:\n{output}"
    rows = read_rows(report)
    assert rows and any(float(row["Inferences/Second"]) > 0 for row in rows), f"no throughput in {rows}\n{output}"
    # perf_analyzer breaks the server-side time down per composing model.
    assert "Composing models" in output and "pre" in output and "cls" in output, output
    assert server.process.poll() is None, f"server exited during the run; log:\n{server.log()[-4000:]}"

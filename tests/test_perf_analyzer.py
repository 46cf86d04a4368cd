"""Triton's perf_analyzer runs to completion against the server (issue 2).

`perf_analyzer -m simple` and `-m mlp` over HTTP (binary and JSON tensors) and gRPC, each a short
count-bounded run at concurrency 2, must exit 0 and write a CSV row with Inferences/Second > 0.
`make test` installs perf_analyzer into bench/.tools/ first (bench/install_perf_analyzer.sh); the
tests skip, saying why, only when that wrapper is missing or cannot run `--version`.
"""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.serving import RunningServer, running_server

pytestmark = pytest.mark.slow

PERF_ANALYZER = Path(__file__).resolve().parent.parent / "bench" / ".tools" / "perf_analyzer"
RUN_TIMEOUT_S = 60.0
# perf_analyzer 2.51 now and then never returns from a --request-count run whose requests the server
# has all answered (seen on this 2-core box about once in 150 runs: the statistics extension counted
# every request, no connection was left open, and it had printed nothing after "Request concurrency"),
# so one hung run is tried again, with a shorter bound each time.
HUNG_RUN_S = 30.0
# A fixed request count ends each run as soon as that many requests are answered (about a second
# here), where time windows would wait for a stability rule that a busy 2-core box may never meet.
# Inferences/Second from a count-bounded run is not a throughput figure; bench/run.py measures those.
SHORT_RUN = ["--concurrency-range", "2", "--request-count", "200"]
JSON_TENSORS = ["--input-tensor-format", "json", "--output-tensor-format", "json"]

# (id, -i protocol, extra flags)
TRANSPORTS = [
    pytest.param("http", [], id="http-binary"),
    pytest.param("http", JSON_TENSORS, id="http-json"),
    pytest.param("grpc", [], id="grpc"),
]


def perf_analyzer_or_skip() -> Path:
    """The installed wrapper, or skip the module with the reason it cannot be used."""
    if not PERF_ANALYZER.exists():
        pytest.skip(
            f"perf_analyzer is not installed at {PERF_ANALYZER} (run bash bench/install_perf_analyzer.sh)"
        )
    try:
        version = subprocess.run(
            [str(PERF_ANALYZER), "--version"], check=False, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"perf_analyzer at {PERF_ANALYZER} cannot run: {exc}")
    if version.returncode != 0:
        output = (version.stdout + version.stderr).strip()[-500:]
        pytest.skip(f"'perf_analyzer --version' exited {version.returncode}: {output}")
    return PERF_ANALYZER


@pytest.fixture(scope="module")
def server(perf_analyzer: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # Depends on perf_analyzer so that a skip does not start a server for nothing.
    with running_server(None, tmp_path_factory.mktemp("perf-server")) as running:
        yield running


def run_perf_analyzer(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run perf_analyzer to its end; a run that hangs (see HUNG_RUN_S) is killed and run once more."""
    try:
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=HUNG_RUN_S)
    except subprocess.TimeoutExpired:
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def read_rows(report: Path) -> list[dict[str, str]]:
    with report.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("model", ["simple", "mlp"])
@pytest.mark.parametrize(("protocol", "flags"), TRANSPORTS)
def test_perf_analyzer_runs_to_completion(
    perf_analyzer: Path, server: RunningServer, tmp_path: Path, model: str, protocol: str, flags: list[str]
) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    report = tmp_path / "report.csv"
    command = [
        str(perf_analyzer),
        "-m",
        model,
        "-u",
        url,
        "-i",
        protocol,
        *SHORT_RUN,
        "-f",
        str(report),
        *flags,
    ]
    completed = run_perf_analyzer(command)
    output = (completed.stdout + completed.stderr)[-4000:]
    assert completed.returncode == 0, f"{' '.join(command)} exited {completed.returncode}:\n{output}"
    rows = read_rows(report)
    assert rows, f"perf_analyzer wrote no CSV rows:\n{output}"
    assert any(float(row["Inferences/Second"]) > 0 for row in rows), f"no throughput in {rows}\n{output}"
    assert server.process.poll() is None, f"server exited during the run; log:\n{server.log()[-4000:]}"

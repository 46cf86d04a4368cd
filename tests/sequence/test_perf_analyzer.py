"""Triton's perf_analyzer recognises the sequence models by their config's sequence_batching block and
drives them with `--sequence-length 8` over HTTP, gRPC and gRPC streaming, to completion (issue 17).

Over one ordered stream (`--streaming`) no request may fail. Over separate calls (HTTP, unary gRPC)
perf_analyzer's default mode sends a sequence's next request without waiting for the one before,
so they can arrive out of order; a request that arrives before its sequence's start or after its
end is refused, as Triton refuses it, and perf_analyzer then exits 99. Those transports run with
`--serial-sequences --sync` (one request of a sequence outstanding at a time, from one thread per
concurrent context: with the asynchronous client alone a clean-clone CI run still saw a request after
its sequence's end), which must complete (exit 0,
a CSV row with throughput); even then perf_analyzer ends its open sequences at the end of a run
without waiting, so a late error line may show and is not asserted against. Each run takes its own --sequence-id-range, since perf_analyzer leaves sequences open
when it stops and a start for a live id is refused (the issue's rule). Skips like
tests/test_perf_analyzer.py when perf_analyzer is not installed.
"""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.monitoring.scrape import scrape
from tests.sequence.models import save_accumulator
from tests.serving import RunningServer, running_server
from tests.test_perf_analyzer import RUN_TIMEOUT_S, read_rows

pytestmark = pytest.mark.slow

SEQUENCE_RUN = ["--sequence-length", "8", "--concurrency-range", "4", "--request-count", "160"]


@pytest.fixture(scope="module")
def server(perf_analyzer: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("pa-sequence-repo")
    save_accumulator(repo, "acc_oldest", strategy="oldest", strategy_block="max_candidate_sequences: 16 max_queue_delay_microseconds: 1000")
    save_accumulator(repo, "acc_direct", strategy="direct")
    with running_server(repo, tmp_path_factory.mktemp("pa-sequence-server")) as running:
        yield running


TRANSPORTS = [
    pytest.param("http", ["--serial-sequences", "--sync"], False, id="http-serial"),
    pytest.param("grpc", ["--serial-sequences", "--sync"], False, id="grpc-serial"),
    pytest.param("grpc", ["--streaming"], True, id="grpc-streaming"),
]
ID_RANGES = iter(range(1, 10**9, 10**6))  # one fresh range of sequence ids per run


@pytest.mark.parametrize("model", ["acc_oldest", "acc_direct"])
@pytest.mark.parametrize(("protocol", "flags", "error_free"), TRANSPORTS)
def test_perf_analyzer_drives_a_sequence_model(
    perf_analyzer: Path, server: RunningServer, tmp_path: Path, model: str, protocol: str, flags: list[str], error_free: bool
) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    report = tmp_path / "report.csv"
    first = next(ID_RANGES)
    command = [
        str(perf_analyzer), "-m", model, "-u", url, "-i", protocol, *SEQUENCE_RUN, "-f", str(report), *flags,
        "--sequence-id-range", f"{first}:{first + 10**6}",
    ]
    starts = scrape(server.metrics_url).value("model_runtime_sequence_starts_total", model=model, version="1") or 0
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    output = (completed.stdout + completed.stderr)[-4000:]
    assert completed.returncode == 0, f"{' '.join(command)} exited {completed.returncode}:\n{output}"
    rows = read_rows(report)
    assert rows and any(float(row["Inferences/Second"]) > 0 for row in rows), f"no throughput in {rows}\n{output}"
    if error_free:
        assert "had error" not in output, output
    # The server ran them as sequences: perf_analyzer started (at least) one per concurrent context.
    after = scrape(server.metrics_url).value("model_runtime_sequence_starts_total", model=model, version="1") or 0
    assert after >= starts + 4, (starts, after)
    assert server.process.poll() is None, f"server exited during the run; log:\n{server.log()[-4000:]}"

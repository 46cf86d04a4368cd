"""The locust users of runtime.loadtest, run headless for a few seconds against a real server.

Locust monkey-patches its process for gevent, so it only ever runs in a subprocess here; the input
helpers (runtime.loadtest.inputs) are plain numpy and are tested in-process.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.serving import RunningServer, running_server

from runtime.examples import write_example_repository
from runtime.loadtest import inputs
from runtime.loadtest.targets import TargetError, grpc_target

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "bench" / "locustfile.py"

# find_spec, not importorskip: importing locust would monkey-patch the test process for gevent.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="needs the loadtest extra")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = write_example_repository(tmp_path_factory.mktemp("repo"))
    with running_server(repo, tmp_path_factory.mktemp("server")) as running:
        yield running


def run_locust(
    user: str, host: str, out: Path, *args: str, seconds: int = 2, users: int = 4
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, str]], list[dict[str, str]]]:
    """Run locust headless; its exit status, its stats rows by name, and its failure rows.
    `user` "" runs every user class of the locustfile."""
    prefix = out / (user or "all")
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *([user] if user else []),
        "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "5",
        "--host", host, "--only-summary", "--loglevel", "WARNING", "--csv", str(prefix), *args,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT, check=False)
    stats_path = Path(f"{prefix}_stats.csv")
    assert stats_path.exists(), f"locust wrote no stats (exit {completed.returncode}):\n{completed.stderr[-3000:]}"
    with open(stats_path) as handle:
        stats = {row["Name"]: row for row in csv.DictReader(handle)}
    with open(f"{prefix}_failures.csv") as handle:
        failures = list(csv.DictReader(handle))
    return completed, stats, failures


def test_http_user_sends_json_and_binary_tensors(server: RunningServer, tmp_path: Path) -> None:
    completed, stats, failures = run_locust(
        "V2HttpUser", f"http://{server.http_url}", tmp_path, "--model", "mlp", "--batch-size", "4"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert not failures
    for name in ("infer mlp [json]", "infer mlp [binary]"):
        assert int(stats[name]["Request Count"]) > 10, stats[name]
        assert int(stats[name]["Failure Count"]) == 0
        assert float(stats[name]["Average Content Size"]) > 0
    total = stats["Aggregated"]
    assert int(total["Request Count"]) == sum(int(r["Request Count"]) for n, r in stats.items() if n != "Aggregated")


def test_grpc_user_reports_each_call(server: RunningServer, tmp_path: Path) -> None:
    completed, stats, failures = run_locust(
        "V2GrpcUser", f"grpc://{server.grpc_url}", tmp_path, "--model", "image_cnn", "--batch-size", "2"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert not failures
    row = stats["ModelInfer image_cnn"]
    assert row["Type"] == "grpc"
    assert int(row["Request Count"]) > 10 and int(row["Failure Count"]) == 0
    # PROBABILITIES [2, 10] FP32 = 80 raw bytes, plus the message around them.
    assert float(row["Average Content Size"]) > 80


def test_inputs_file_with_bytes_tensors(server: RunningServer, tmp_path: Path) -> None:
    samples = tmp_path / "samples.json"
    bodies = [
        {"inputs": [{"name": "TEXT", "shape": [2], "datatype": "BYTES", "data": ["Hello", "WORLD"]}]},
        {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["ÄÖÜ"]}]},
    ]
    samples.write_text(json.dumps(bodies))
    completed, stats, failures = run_locust(
        "V2HttpUser", f"http://{server.http_url}", tmp_path, "--model", "text", "--inputs-file", str(samples),
        seconds=2, users=2,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert not failures
    assert "model metadata" not in stats  # the file says everything
    assert int(stats["infer text [binary]"]["Request Count"]) > 5


def test_failures_are_counted_and_fail_the_run(server: RunningServer, tmp_path: Path) -> None:
    """A run whose requests fail must say so: failure rows, and a non-zero exit status."""
    samples = tmp_path / "wrong.json"
    samples.write_text(json.dumps({"inputs": [{"name": "NOPE", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}]}))
    completed, stats, failures = run_locust(
        "V2GrpcUser", server.grpc_url, tmp_path, "--model", "mlp", "--inputs-file", str(samples), seconds=2, users=2
    )
    assert completed.returncode != 0
    row = stats["ModelInfer mlp"]
    assert int(row["Request Count"]) > 0 and row["Failure Count"] == row["Request Count"]
    assert failures and all("INVALID_ARGUMENT: model 'mlp'" in f["Error"] for f in failures), failures
    assert len(failures) == 1  # grouped: numbers in messages do not split rows


# ---- the inputs helpers, in-process ----------------------------------------------------------------


METADATA = {
    "name": "m",
    "inputs": [
        {"name": "A", "datatype": "FP16", "shape": [-1, 3]},
        {"name": "B", "datatype": "BYTES", "shape": [-1, -1]},
        {"name": "C", "datatype": "BOOL", "shape": [2]},
        {"name": "D", "datatype": "UINT8", "shape": [-1]},
    ],
}


def test_sample_from_metadata_fills_dims_and_types() -> None:
    sample = inputs.sample_from_metadata(METADATA, batch_size=5, variable_dim=7, seed=1)
    assert sample["A"].shape == (5, 3) and sample["A"].dtype == np.float16
    assert sample["B"].shape == (5, 7) and isinstance(sample["B"].flat[0], bytes)
    assert sample["C"].shape == (2,) and sample["C"].dtype == np.bool_
    assert sample["D"].shape == (5,) and sample["D"].max() < 10
    again = inputs.sample_from_metadata(METADATA, batch_size=5, variable_dim=7, seed=1)
    assert all(np.array_equal(sample[k], again[k]) for k in sample)


def test_bodies_decode_with_the_servers_own_decoder() -> None:
    from runtime.server.http.codec import decode_infer_request, split_body

    sample = inputs.sample_from_metadata(METADATA, batch_size=3, variable_dim=2)
    body, header_length = inputs.binary_body(sample)
    doc, binary = split_body(body, str(header_length))
    decoded, binary_output = decode_infer_request(doc, binary, "m", "")
    assert binary_output is True and decoded.parameters == {}  # parameters.binary_data_output: true
    for name, array in sample.items():
        assert np.array_equal(decoded.inputs[name], array), name
    doc, binary = split_body(inputs.json_body(sample), None)
    decoded, _ = decode_infer_request(doc, binary, "m", "")
    for name, array in sample.items():
        assert np.array_equal(decoded.inputs[name], array), name


def test_load_samples_from_npz(tmp_path: Path) -> None:
    path = tmp_path / "one.npz"
    np.savez(path, INPUT=np.ones((2, 16), dtype=np.float32))
    [sample] = inputs.load_samples(path)
    assert sample["INPUT"].shape == (2, 16)
    bad = tmp_path / "bad.json"
    bad.write_text('{"inputs": [{"name": "X"}]}')
    with pytest.raises(ValueError, match="not a V2 request body"):
        inputs.load_samples(bad)


# ---- where the gRPC user connects (runtime.loadtest.targets) ---------------------------------------


def test_both_users_with_an_http_host_and_no_grpc_host_are_refused_at_start(server: RunningServer, tmp_path: Path) -> None:
    prefix = tmp_path / "refused"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "2", "-r", "2", "-t", "2s",
        "--host", f"http://{server.http_url}", "--only-summary", "--csv", str(prefix),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert completed.returncode != 0
    assert f"--host http://{server.http_url} is an HTTP URL" in completed.stderr
    assert "pass --grpc-host HOST:PORT" in completed.stderr
    stats_path = Path(f"{prefix}_stats.csv")
    if stats_path.exists():  # locust writes its (empty) statistics as it exits
        with open(stats_path) as handle:
            assert all(int(row["Request Count"]) == 0 for row in csv.DictReader(handle))  # refused before any request


def test_both_users_run_with_their_own_hosts(server: RunningServer, tmp_path: Path) -> None:
    completed, stats, failures = run_locust(
        "", f"http://{server.http_url}", tmp_path, "--grpc-host", server.grpc_url, "--model", "mlp", seconds=4, users=2
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert not failures
    for name in ("ModelInfer mlp", "infer mlp [json]"):  # one user of each class
        assert int(stats.get(name, {}).get("Request Count", "0")) > 0, (name, sorted(stats), completed.stderr[-2000:])


@pytest.mark.parametrize(
    "grpc_host, host, target",
    [
        ("h:9001", "http://h:9000", "h:9001"),
        ("grpc://h:9001/", "", "h:9001"),
        ("", "127.0.0.1:8001", "127.0.0.1:8001"),  # V2GrpcUser alone, --host its target
        ("", "grpc://127.0.0.1:8001", "127.0.0.1:8001"),
        ("", "http://10.0.0.5:8000", "10.0.0.5:8001"),  # Triton's convention
        ("", "https://infer.example:8000/", "infer.example:8001"),
        ("", "http://[::1]:8000", "[::1]:8001"),
    ],
)
def test_grpc_target(grpc_host: str, host: str, target: str) -> None:
    assert grpc_target(grpc_host, host) == target


@pytest.mark.parametrize("host", ["http://127.0.0.1:9000", "http://localhost", "https://infer.example", ""])
def test_no_grpc_target_to_derive_names_the_flag(host: str) -> None:
    with pytest.raises(TargetError, match="--grpc-host HOST:PORT"):
        grpc_target("", host)

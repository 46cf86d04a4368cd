"""Triton's statistics extension: GET /v2/models[/{m}[/versions/{v}]]/stats and gRPC ModelStatistics.

The shared server is used by other tests too, so counts are checked as differences across our own
requests. Shapes are checked key for key against Triton's, since perf_analyzer reads them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tests.serving import RunningServer
from tritonclient.utils import InferenceServerException

DURATION_KEYS = {"count", "ns"}
INFERENCE_STATS_KEYS = {
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
}
MODEL_STAT_KEYS = {
    "name",
    "version",
    "last_inference",
    "inference_count",
    "execution_count",
    "inference_stats",
    "batch_stats",
    "memory_usage",
}
BATCH_STAT_KEYS = {"batch_size", "compute_input", "compute_infer", "compute_output"}


def get(server: RunningServer, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def simple_inputs(rows: int, client: Any = httpclient) -> list[Any]:
    """INPUT0 and INPUT1 of `simple` for `rows` rows, as `client` (tritonclient.http or .grpc) wants them."""
    data = np.arange(rows * 16, dtype=np.int32).reshape(rows, 16)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = client.InferInput(name, [rows, 16], "INT32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


def test_json_shape_matches_triton(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    client.infer("simple", simple_inputs(1))
    status, body = get(server, "/v2/models/simple/stats")
    assert status == 200
    assert set(body) == {"model_stats"}
    (stat,) = body["model_stats"]
    assert set(stat) == MODEL_STAT_KEYS
    assert (stat["name"], stat["version"]) == ("simple", "1")
    assert all(isinstance(stat[k], int) for k in ("last_inference", "inference_count", "execution_count"))
    assert set(stat["inference_stats"]) == INFERENCE_STATS_KEYS
    for duration in stat["inference_stats"].values():
        assert set(duration) == DURATION_KEYS and all(isinstance(v, int) for v in duration.values())
    assert stat["batch_stats"], "a request ran, so some batch size was executed"
    for batch in stat["batch_stats"]:
        assert set(batch) == BATCH_STAT_KEYS
        assert isinstance(batch["batch_size"], int)
        assert all(set(batch[k]) == DURATION_KEYS for k in BATCH_STAT_KEYS - {"batch_size"})
    assert stat["memory_usage"] == []
    client.close()


def test_counts_grow_by_what_we_sent_over_both_protocols(server: RunningServer) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    before = http.get_inference_statistics("simple")["model_stats"][0]
    http.infer("simple", simple_inputs(1))
    http.infer("simple", simple_inputs(3))
    grpc.infer("simple", simple_inputs(3, grpcclient))
    after_http = http.get_inference_statistics("simple")["model_stats"][0]
    after_grpc = grpc.get_inference_statistics("simple").model_stats[0]

    def grew(key: str) -> int:
        return int(after_http[key] - before[key])

    assert (grew("inference_count"), grew("execution_count")) == (7, 3)  # simple has no dynamic batching
    success = after_http["inference_stats"]["success"]
    assert success["count"] - before["inference_stats"]["success"]["count"] == 3
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert after_http["inference_stats"][phase]["count"] - before["inference_stats"][phase]["count"] == 3
    sizes_before = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    sizes_after = {b["batch_size"]: b["compute_infer"]["count"] for b in after_http["batch_stats"]}
    assert sizes_after.get(1, 0) - sizes_before.get(1, 0) == 1
    assert sizes_after.get(3, 0) - sizes_before.get(3, 0) == 2
    assert after_http["last_inference"] >= before["last_inference"] > 0
    # gRPC reads the same counters
    assert (after_grpc.name, after_grpc.version) == ("simple", "1")
    assert (after_grpc.inference_count, after_grpc.execution_count) == (
        after_http["inference_count"],
        after_http["execution_count"],
    )
    assert after_grpc.inference_stats.success.count == success["count"]
    assert after_grpc.inference_stats.success.ns == success["ns"]
    assert {b.batch_size: b.compute_infer.count for b in after_grpc.batch_stats} == sizes_after
    http.close()
    grpc.close()


def test_all_models_lists_every_loaded_version(server: RunningServer) -> None:
    status, body = get(server, "/v2/models/stats")
    assert status == 200  # not taken for model metadata of a model named "stats"
    listed = {(s["name"], s["version"]) for s in body["model_stats"]}
    assert {("simple", "1"), ("mlp", "1"), ("text", "1"), ("versioned", "1"), ("versioned", "2")} <= listed
    assert not {name for name, _ in listed} & {"corrupt", "bad_config"}  # they failed to load
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert {(s.name, s.version) for s in grpc.get_inference_statistics().model_stats} == listed
    grpc.close()


def test_one_model_lists_its_versions_and_one_version_itself(server: RunningServer) -> None:
    _, both = get(server, "/v2/models/versioned/stats")
    assert [(s["name"], s["version"]) for s in both["model_stats"]] == [
        ("versioned", "1"),
        ("versioned", "2"),
    ]
    _, one = get(server, "/v2/models/versioned/versions/1/stats")
    assert [(s["name"], s["version"]) for s in one["model_stats"]] == [("versioned", "1")]
    client = httpclient.InferenceServerClient(server.http_url)
    stats = client.get_inference_statistics("versioned", "2")
    assert [s["version"] for s in stats["model_stats"]] == ["2"]
    client.close()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/no_such_model/stats", 404),
        ("/v2/models/versioned/versions/9/stats", 404),
        ("/v2/models/corrupt/stats", 503),
    ],
    ids=["unknown-model", "unknown-version", "failed-load"],
)
def test_http_errors(server: RunningServer, path: str, status: int) -> None:
    code, body = get(server, path)
    assert code == status
    assert set(body) == {"error"} and body["error"]


def test_grpc_errors(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        client.get_inference_statistics("no_such_model")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as caught:
        client.get_inference_statistics("corrupt")
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    client.close()


def test_server_metadata_lists_the_extension(server: RunningServer) -> None:
    _, body = get(server, "/v2")
    assert "statistics" in body["extensions"]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert "statistics" in client.get_server_metadata().extensions
    client.close()

"""Monitoring end to end (issue 7): a known set of requests in, exact numbers out of /metrics and /stats.

One server, one round of traffic (module fixture): successes over HTTP and gRPC, each failure
reason, known predictions and two score streams (one drawn like the reference, one shifted).
Each test then checks one part of what /metrics, /stats and the request log say.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tests.serving import RunningServer, running_server
from tritonclient.utils import InferenceServerException

from tests.monitoring.models import (
    DRIFT_WINDOW,
    INPUT_BUCKETS,
    LABELS,
    SCORE_BUCKETS,
    SLOW_DELAY_S,
    build_monitoring_repository,
    reference_scores,
    shifted_scores,
)
from tests.monitoring.scrape import Samples, eventually, scrape
from runtime.monitoring import EXPORTED, PREFIX

CLF_HTTP = [
    np.array([[0.9, 0.1, 0.0]], np.float32),  # cat
    np.array([[0.0, 1.0, 0.0], [0.1, 0.2, 2.0]], np.float32),  # dog, bird
    np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [0.0, 0.0, 0.7]], np.float32),  # cat, dog, bird
]
CLF_GRPC = np.array([[0, 5, 0], [1, 2, 0], [0, 1, 0.5], [0.2, 0.1, 3]], np.float32)  # dog, dog, dog, bird
SCORE_ROWS, SCORE_BATCH = 250, 10


@dataclass
class Traffic:
    server: RunningServer
    metrics: Samples
    http_stats: dict[str, Any]
    grpc_stats: Any  # tritonclient's ModelStatisticsResponse
    scores: dict[str, np.ndarray]


def _http_input(array: np.ndarray, name: str = "INPUT0", datatype: str = "FP32") -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _grpc_input(array: np.ndarray, name: str = "INPUT0", datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _fails(call: Any, status: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert status in str(caught.value.status()), caught.value


def _queued(server: RunningServer, model: str) -> bool:
    return scrape(server.metrics_url).value(f"{PREFIX}_queue_depth", model=model, version="1") == 1


def _counted(server: RunningServer, model: str, protocol: str, reason: str) -> bool:
    samples = scrape(server.metrics_url)
    labels = dict(model=model, version="1", protocol=protocol, outcome="failure", reason=reason)
    return samples.value(f"{PREFIX}_requests_total", **labels) == 1


def _slow_traffic(
    server: RunningServer, http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    one = np.array([[1.0, 2.0]], np.float32)
    # timeout: 100 ms allowed, the batch would wait 1.5 s
    _fails(lambda: http.infer("slow", [_http_input(one)], timeout=100_000), "504")
    # cancelled over HTTP: the client goes away while its request waits
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    ).encode()
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(
            b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        eventually(lambda: _queued(server, "slow"), what="the HTTP request to wait in slow's queue")
    eventually(
        lambda: _counted(server, "slow", "http", "cancelled"), what="the HTTP cancellation to be counted"
    )
    # cancelled over gRPC
    context = grpc.async_infer("slow", [_grpc_input(one)], callback=lambda result, error: None)
    eventually(lambda: _queued(server, "slow"), what="the gRPC request to wait in slow's queue")
    context.cancel()
    eventually(
        lambda: _counted(server, "slow", "grpc", "cancelled"), what="the gRPC cancellation to be counted"
    )
    # queue full: one request waits (and later succeeds), the next one is turned away
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting_client = httpclient.InferenceServerClient(server.http_url)
        waiting = pool.submit(waiting_client.infer, "slow", [_http_input(one)])
        eventually(lambda: _queued(server, "slow"), what="a request to wait in slow's queue")
        _fails(lambda: http.infer("slow", [_http_input(one)]), "503")
        assert waiting.result(timeout=30).as_numpy("OUTPUT0").tolist() == [[1.0, 2.0]]
        waiting_client.close()


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    repository = build_monitoring_repository(tmp_path_factory.mktemp("monitoring-repo"))
    args = ["--drift-window", str(DRIFT_WINDOW), "--log-format", "json", "--request-log-sample-rate", "1"]
    with running_server(repository, tmp_path_factory.mktemp("monitoring-server"), args) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        for rows in CLF_HTTP:
            assert http.infer("clf", [_http_input(rows)]).as_numpy("OUTPUT0").shape == rows.shape
        grpc.infer("clf", [_grpc_input(CLF_GRPC)])
        _fails(lambda: http.infer("clf", [_http_input(np.zeros((1, 4), np.float32))]), "400")
        _fails(
            lambda: grpc.infer("clf", [_grpc_input(np.zeros((1, 3)), datatype="FP64")]), "INVALID_ARGUMENT"
        )
        _fails(lambda: http.infer("nope", [_http_input(CLF_GRPC)]), "404")
        _fails(lambda: grpc.infer("nope-too", [_grpc_input(CLF_GRPC)]), "NOT_FOUND")
        _fails(lambda: http.infer("clf", [_http_input(CLF_GRPC)], model_version="7"), "404")
        http.infer("failing", [_http_input(np.array([[1, 2, 3, 4]], np.float32))])
        _fails(lambda: http.infer("failing", [_http_input(np.array([[100, 0, 0, 0]], np.float32))]), "500")
        scores = {"1": reference_scores(SCORE_ROWS, seed=1), "2": shifted_scores(SCORE_ROWS, seed=2)}
        for version, values in scores.items():
            for start in range(0, SCORE_ROWS, SCORE_BATCH):
                http.infer("score", [_http_input(values[start : start + SCORE_BATCH])], model_version=version)
        _slow_traffic(server, http, grpc)
        yield Traffic(
            server=server,
            metrics=scrape(server.metrics_url),
            http_stats=http.get_inference_statistics(),
            grpc_stats=grpc.get_inference_statistics(),
            scores=scores,
        )
        http.close()
        grpc.close()


# ---- /metrics: requests ------------------------------------------------------------------------

EXPECTED_REQUESTS = {
    # (model, version, protocol, outcome, reason): count
    ("clf", "1", "http", "success", ""): 3,
    ("clf", "1", "grpc", "success", ""): 1,
    ("clf", "1", "http", "failure", "invalid_input"): 1,
    ("clf", "1", "grpc", "failure", "invalid_input"): 1,
    ("clf", "", "http", "failure", "not_found"): 1,  # version 7 does not exist
    ("", "", "http", "failure", "not_found"): 1,  # unknown model names add no label values
    ("", "", "grpc", "failure", "not_found"): 1,
    ("failing", "1", "http", "success", ""): 1,
    ("failing", "1", "http", "failure", "execution_error"): 1,
    ("score", "1", "http", "success", ""): SCORE_ROWS // SCORE_BATCH,
    ("score", "2", "http", "success", ""): SCORE_ROWS // SCORE_BATCH,
    ("slow", "1", "http", "failure", "timeout"): 1,
    ("slow", "1", "http", "failure", "cancelled"): 1,
    ("slow", "1", "grpc", "failure", "cancelled"): 1,
    ("slow", "1", "http", "failure", "queue_full"): 1,
    ("slow", "1", "http", "success", ""): 1,
}


def test_request_counters_by_outcome_and_reason_are_exact(traffic: Traffic) -> None:
    seen = {
        (l["model"], l["version"], l["protocol"], l["outcome"], l["reason"]): value
        for l, value in traffic.metrics.matching(f"{PREFIX}_requests_total")
    }
    assert seen == EXPECTED_REQUESTS


def test_latency_histograms_count_successes(traffic: Traffic) -> None:
    m = traffic.metrics
    name = f"{PREFIX}_request_duration_seconds"
    assert m.value(f"{name}_count", model="clf", version="1", protocol="http") == 3
    assert m.value(f"{name}_count", model="clf", version="1", protocol="grpc") == 1
    assert m.value(f"{name}_count", model="score", version="2", protocol="http") == 25
    # slow's one success waited out its 1.5 s batching window: above 1 s, below 2.5 s
    slow = m.buckets(name, model="slow", version="1", protocol="http")
    assert (slow["1.0"], slow["2.5"], slow["+Inf"]) == (0, 1, 1)
    slow_sum = m.value(f"{name}_sum", model="slow", version="1", protocol="http")
    assert slow_sum is not None and SLOW_DELAY_S <= slow_sum < 2.5


def test_queue_compute_and_batch_histograms(traffic: Traffic) -> None:
    m = traffic.metrics
    clf = dict(model="clf", version="1")
    assert m.value(f"{PREFIX}_queue_duration_seconds_count", **clf) == 4
    for phase in ("input", "infer", "output"):
        assert m.value(f"{PREFIX}_compute_duration_seconds_count", **clf, phase=phase) == 4
    # no dynamic batching: one batch per request, of 1, 2, 3 and 4 rows
    batches = m.buckets(f"{PREFIX}_batch_size", **clf)
    assert (batches["1.0"], batches["2.0"], batches["4.0"], batches["+Inf"]) == (1, 2, 4, 4)
    assert m.value(f"{PREFIX}_batch_size_sum", **clf) == 10
    slow_queue = m.buckets(f"{PREFIX}_queue_duration_seconds", model="slow", version="1")
    assert (slow_queue["1.0"], slow_queue["+Inf"]) == (0, 1)


def test_rows_and_executions_give_the_average_batch_size(traffic: Traffic) -> None:
    m = traffic.metrics
    for model, version, rows, executions in [
        ("clf", "1", 10, 4),
        ("score", "1", 250, 25),
        ("failing", "1", 1, 1),
        ("slow", "1", 1, 1),
    ]:
        assert m.value(f"{PREFIX}_inference_rows_total", model=model, version=version) == rows
        assert m.value(f"{PREFIX}_executions_total", model=model, version=version) == executions


def test_model_gauges(traffic: Traffic) -> None:
    m = traffic.metrics
    versions = [("clf", "1"), ("score", "1"), ("score", "2"), ("slow", "1"), ("failing", "1")]
    for model, version in versions:
        assert m.value(f"{PREFIX}_queue_depth", model=model, version=version) == 0
        assert m.value(f"{PREFIX}_model_state", model=model, version=version, state="READY") == 1
        assert m.value(f"{PREFIX}_model_state", model=model, version=version, state="UNAVAILABLE") == 0
        load_seconds = m.value(f"{PREFIX}_model_load_duration_seconds", model=model, version=version)
        assert load_seconds is not None and load_seconds > 0
    # no traffic split set: requests naming no version all go to the latest
    assert m.value(f"{PREFIX}_traffic_weight", model="score", version="2") == 1
    assert m.value(f"{PREFIX}_traffic_weight", model="score", version="1") == 0


def test_process_metrics(traffic: Traffic) -> None:
    m = traffic.metrics
    assert m.value("process_resident_memory_bytes") > 0  # type: ignore[operator]
    assert m.value("process_cpu_seconds_total") > 0  # type: ignore[operator]


def test_every_model_metric_is_exported(traffic: Traffic) -> None:
    families = traffic.metrics.families
    # GPU metrics need a GPU; in-flight needs the engine's request_started hook
    expected = {name for name in EXPORTED if "_gpu_" not in name and name != f"{PREFIX}_inflight_requests"}
    missing = {name for name in expected if name not in families}
    assert not missing
    for name in expected:
        assert families[name] == EXPORTED[name].kind, name


# ---- /metrics: predictions and drift -----------------------------------------------------------


def test_class_counters_count_argmax_labels(traffic: Traffic) -> None:
    counts = {
        labels["class"]: value
        for labels, value in traffic.metrics.matching(
            f"{PREFIX}_prediction_class_total", model="clf", version="1"
        )
    }
    assert counts == {"cat": 2, "dog": 5, "bird": 3}
    assert sorted(counts) == sorted(LABELS)


def test_score_histograms_count_every_value(traffic: Traffic) -> None:
    for version, values in traffic.scores.items():
        buckets = traffic.metrics.buckets(
            f"{PREFIX}_prediction_value", model="score", version=version, output="OUTPUT0"
        )
        expected = {
            **{str(float(b)): float(np.sum(values <= b)) for b in SCORE_BUCKETS},
            "+Inf": float(values.size),
        }
        assert buckets == expected
    # the shifted stream has no score at or below 0.25
    assert (
        traffic.metrics.buckets(f"{PREFIX}_prediction_value", model="score", version="2", output="OUTPUT0")[
            "0.25"
        ]
        == 0
    )


def test_input_feature_statistics(traffic: Traffic) -> None:
    m = traffic.metrics
    # feature 0 of the 10 clf rows: 0.9 0 0.1 2 0 0 0 1 0 0.2; feature 2: 0 0 2 1 1 0.7 0 0 0.5 3
    expected = {"0": ({"0.5": 7, "1.5": 9, "+Inf": 10}, 4.2), "2": ({"0.5": 5, "1.5": 8, "+Inf": 10}, 8.2)}
    for feature, (buckets, total) in expected.items():
        labels = dict(model="clf", version="1", input="INPUT0", feature=feature)
        assert m.buckets(f"{PREFIX}_input_value", **labels) == buckets
        assert m.value(f"{PREFIX}_input_value_sum", **labels) == pytest.approx(total, abs=1e-5)
    assert [str(float(b)) for b in INPUT_BUCKETS] == ["0.5", "1.5"]
    assert not m.matching(f"{PREFIX}_input_value_count", model="clf", feature="1")


def test_shifted_scores_raise_the_drift_score_and_reference_like_ones_do_not(traffic: Traffic) -> None:
    m = traffic.metrics
    for kind in ("output", "input"):
        steady = m.value(
            f"{PREFIX}_drift_psi",
            model="score",
            version="1",
            kind=kind,
            tensor="OUTPUT0" if kind == "output" else "INPUT0",
        )
        shifted = m.value(
            f"{PREFIX}_drift_psi",
            model="score",
            version="2",
            kind=kind,
            tensor="OUTPUT0" if kind == "output" else "INPUT0",
        )
        assert steady is not None and shifted is not None
        assert steady < 0.1, f"{kind} drift of reference-like scores: {steady}"
        assert shifted > 1.0, f"{kind} drift of shifted scores: {shifted}"
        for version in ("1", "2"):
            tensor = "OUTPUT0" if kind == "output" else "INPUT0"
            observed = m.value(
                f"{PREFIX}_drift_window_observations",
                model="score",
                version=version,
                kind=kind,
                tensor=tensor,
            )
            assert observed == DRIFT_WINDOW  # 250 sent, the window keeps the last 200


# ---- /stats ------------------------------------------------------------------------------------

EXPECTED_STATS = {
    # (model, version): (success, fail, inference_count, execution_count, batch sizes)
    ("clf", "1"): (4, 0, 10, 4, [1, 2, 3, 4]),
    ("failing", "1"): (1, 1, 1, 1, [1]),
    ("score", "1"): (25, 0, 250, 25, [10]),
    ("score", "2"): (25, 0, 250, 25, [10]),
    ("slow", "1"): (1, 4, 1, 1, [1]),  # timeout, two cancellations and queue_full are failures
}


def test_http_stats_counts_are_exact(traffic: Traffic) -> None:
    stats = {(s["name"], s["version"]): s for s in traffic.http_stats["model_stats"]}
    assert set(stats) == set(EXPECTED_STATS)
    for key, (success, fail, rows, executions, sizes) in EXPECTED_STATS.items():
        s = stats[key]
        inference = s["inference_stats"]
        assert (inference["success"]["count"], inference["fail"]["count"]) == (success, fail), key
        assert (s["inference_count"], s["execution_count"]) == (rows, executions), key
        assert inference["queue"]["count"] == success, key
        for phase in ("compute_input", "compute_infer", "compute_output"):
            assert inference[phase]["count"] == success, key
        assert [b["batch_size"] for b in s["batch_stats"]] == sizes, key
        assert sum(b["compute_infer"]["count"] for b in s["batch_stats"]) == executions, key
        assert s["last_inference"] > 0
    assert (
        stats[("slow", "1")]["inference_stats"]["queue"]["ns"] >= (SLOW_DELAY_S - 0.001) * 1e9
    )  # waited out its window


def test_grpc_stats_match_http_stats(traffic: Traffic) -> None:
    http = {(s["name"], s["version"]): s for s in traffic.http_stats["model_stats"]}
    grpc = {(s.name, s.version): s for s in traffic.grpc_stats.model_stats}
    assert set(grpc) == set(http)
    for key, s in grpc.items():
        h = http[key]
        assert (s.inference_count, s.execution_count, s.last_inference) == (
            h["inference_count"],
            h["execution_count"],
            h["last_inference"],
        )
        for field in (
            "success",
            "fail",
            "queue",
            "compute_input",
            "compute_infer",
            "compute_output",
            "cache_hit",
            "cache_miss",
        ):
            duration = getattr(s.inference_stats, field)
            assert (duration.count, duration.ns) == (
                h["inference_stats"][field]["count"],
                h["inference_stats"][field]["ns"],
            )
        assert [b.batch_size for b in s.batch_stats] == [b["batch_size"] for b in h["batch_stats"]]


def test_metrics_and_stats_agree(traffic: Traffic) -> None:
    """Rows, executions and successes are the same numbers in both views."""
    stats = {(s["name"], s["version"]): s for s in traffic.http_stats["model_stats"]}
    m = traffic.metrics
    for (model, version), s in stats.items():
        assert m.value(f"{PREFIX}_inference_rows_total", model=model, version=version) == s["inference_count"]
        assert m.value(f"{PREFIX}_executions_total", model=model, version=version) == s["execution_count"]
        successes = m.total(f"{PREFIX}_requests_total", model=model, version=version, outcome="success")
        assert successes == s["inference_stats"]["success"]["count"]


# ---- structured request log --------------------------------------------------------------------


def test_request_log_has_one_json_line_per_request(traffic: Traffic) -> None:
    events = []
    for line in traffic.server.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "request":
                events.append(entry)
    assert len(events) == sum(EXPECTED_REQUESTS.values())
    clf_successes = [e for e in events if e["model"] == "clf" and e["outcome"] == "success"]
    assert sorted(e["protocol"] for e in clf_successes) == ["grpc", "http", "http", "http"]
    assert all(e["logger"] == "runtime.requests" and e["duration_ms"] >= 0 for e in events)
    assert {e["outcome"] for e in events if e["model"] == "slow"} == {
        "timeout",
        "cancelled",
        "queue_full",
        "success",
    }


def test_every_dashboard_series_is_in_a_live_scrape(traffic: Traffic) -> None:
    """Each non-GPU panel of the Grafana dashboard has data after ordinary traffic (GPU panels say "no GPU")."""
    from tests.monitoring.test_dashboard import MONITORING, _queries, metric_names

    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    live = traffic.metrics.names()
    empty: dict[str, list[str]] = {}
    for where, expr in _queries(dashboard):
        names = metric_names(expr)
        if not any("_gpu_" in name for name in names) and names - live:
            empty[where] = sorted(names - live)
    assert not empty, f"dashboard queries with no series in a live scrape: {empty}"

"""Sequence models over the wire, with tritonclient: HTTP, gRPC and gRPC streaming (ModelStreamInfer).

Concurrent clients run interleaved sequences and each gets its own running sums exactly; the
oldest strategy batches several sequences (the statistics extension shows it); every bad input is
400 / INVALID_ARGUMENT naming what was wrong; the config shows the sequence_batching block; idle
release and the sequence metrics are visible from outside.
"""
from __future__ import annotations

import http.client
import json
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as service_pb2
import tritonclient.grpc.service_pb2_grpc as service_pb2_grpc
import tritonclient.http as httpclient

from runtime.examples import save_model
from tests.models import build_identity
from tests.monitoring.scrape import scrape
from tests.sequence.models import save_accumulator
from tests.server.conftest import Client, protocol_client
from tests.serving import RunningServer, running_server, thread_http_client

OLDEST = "max_candidate_sequences: 32 preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 30000"
DIRECT = "max_queue_delay_microseconds: 30000 minimum_slot_utilization: 0.25"
MODELS = ["acc_oldest", "acc_direct"]
IDLE_US = 200_000


@pytest.fixture(scope="module", params=[1, 3], ids=["workers1", "workers3"])
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """One process, and --workers 3 (the sequence table lives in the engine process; front ends forward)."""
    repo = tmp_path_factory.mktemp("sequence-repo")
    save_accumulator(repo, "acc_oldest", strategy="oldest", strategy_block=OLDEST)
    save_accumulator(repo, "acc_direct", strategy="direct", strategy_block=DIRECT, flag_type="FP32", instances=2)
    save_accumulator(repo, "acc_idle", strategy="oldest", idle_us=IDLE_US, flag_type="BOOL", corrid="TYPE_STRING")
    save_model(build_identity("FP32"), repo, "plain")
    with running_server(repo, tmp_path_factory.mktemp("sequence-server"), workers=request.param) as running:
        yield running


@pytest.fixture(scope="module", params=["http", "grpc"])
def either(request: pytest.FixtureRequest, server: RunningServer) -> Client:
    """The tests that HTTP and gRPC share, over this module's server (tests/server's `either` needs its own)."""
    return protocol_client(request.param, server)


def value_input(module: Any, value: float) -> Any:
    tensor = module.InferInput("INPUT", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], np.float32))
    return tensor


def sequence_values(key: int, steps: int = 6) -> list[float]:
    return [float(key % 97 + step) for step in range(steps)]


def run_unary(protocol: str, server: RunningServer, model: str, keys: list[int]) -> dict[int, list[float]]:
    """One client (its own connection) runs its sequences interleaved, one step of each in turn."""
    def go(client: Any, module: Any) -> dict[int, list[float]]:
        sums: dict[int, list[float]] = {key: [] for key in keys}
        steps = {key: sequence_values(key) for key in keys}
        for step in range(6):
            for key in keys:
                result = client.infer(
                    model, [value_input(module, steps[key][step])],
                    sequence_id=key, sequence_start=step == 0, sequence_end=step == 5,
                )
                sums[key].append(float(result.as_numpy("OUTPUT")[0, 0]))
        return sums

    if protocol == "http":
        with thread_http_client(server.http_url) as client:
            return go(client, httpclient)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return go(client, grpcclient)
    finally:
        client.close()


def run_stream(server: RunningServer, model: str, keys: list[int]) -> dict[int, list[float]]:
    """One stream carries its sequences interleaved, every request sent without waiting for answers."""
    answers: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        steps = {key: sequence_values(key) for key in keys}
        for step in range(6):
            for key in keys:
                client.async_stream_infer(
                    model, [value_input(grpcclient, steps[key][step])], request_id=f"{key}:{step}",
                    sequence_id=key, sequence_start=step == 0, sequence_end=step == 5,
                )
        got: dict[int, dict[int, float]] = {key: {} for key in keys}
        for _ in range(6 * len(keys)):
            answer = answers.get(timeout=30)
            assert not isinstance(answer, Exception), answer
            key, step = map(int, answer.get_response().id.split(":"))
            got[key][step] = float(answer.as_numpy("OUTPUT")[0, 0])
        return {key: [by_step[s] for s in range(6)] for key, by_step in got.items()}
    finally:
        client.stop_stream()
        client.close()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("transport", ["http", "grpc", "stream"])
def test_concurrent_clients_each_get_their_own_running_sums(server: RunningServer, model: str, transport: str) -> None:
    base = {"http": 1000, "grpc": 2000, "stream": 3000}[transport] + (0 if model == "acc_oldest" else 500)
    # 8 clients x 2 interleaved sequences: 16, as many as acc_direct's slots (2 instances x max_batch_size 8).
    # More would wait in the backlog for a slot that a blocked client's other sequence holds.
    clients = [[base + 10 * c + i for i in range(2)] for c in range(8)]
    with ThreadPoolExecutor(len(clients)) as pool:
        if transport == "stream":
            results = list(pool.map(lambda keys: run_stream(server, model, keys), clients))
        else:
            results = list(pool.map(lambda keys: run_unary(transport, server, model, keys), clients))
    for keys, sums in zip(clients, results):
        for key in keys:
            assert sums[key] == list(np.cumsum(sequence_values(key))), (transport, model, key)


def test_oldest_batches_hold_several_sequences(server: RunningServer) -> None:
    """After the concurrent runs above (or this one's own), the oldest strategy executed fewer batches
    than requests: batches held requests of several sequences."""
    keys = [[9000 + 10 * c + i for i in range(2)] for c in range(8)]
    with ThreadPoolExecutor(len(keys)) as pool:
        list(pool.map(lambda k: run_stream(server, "acc_oldest", k), keys))
    client = httpclient.InferenceServerClient(server.http_url)
    stats = client.get_inference_statistics("acc_oldest")["model_stats"][0]
    assert stats["execution_count"] < stats["inference_count"], stats
    assert any(int(batch["batch_size"]) > 1 for batch in stats["batch_stats"]), stats["batch_stats"]


def test_the_config_shows_the_sequence_batching_block(either: Client) -> None:
    config = either.model_config("acc_oldest")
    block = config["sequence_batching"]
    assert "oldest" in block and int(block["oldest"]["max_candidate_sequences"]) == 32
    # gRPC's JSON leaves out a field at its default: kind START is enum value 0.
    kinds = {c["name"]: c["control"][0].get("kind", "CONTROL_SEQUENCE_START") for c in block["control_input"]}
    assert kinds == {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END",
                     "READY": "CONTROL_SEQUENCE_READY", "CORRID": "CONTROL_SEQUENCE_CORRID"}
    assert block["state"][0]["input_name"] == "STATE_IN"
    # Control and state tensors are fed by the server: clients see only INPUT and the outputs.
    assert [t["name"] for t in config["input"]] == ["INPUT"]
    assert "STATE_OUT" not in {t["name"] for t in config["output"]}
    metadata = either.model_metadata("acc_oldest")
    assert [name for name, _, _ in metadata["inputs"]] == ["INPUT"]


def test_bad_sequence_requests(either: Client) -> None:
    tensor = [value_input(either.module, 1.0)]
    base = 50_000 if either.protocol == "http" else 60_000
    either.expect_error(
        lambda: either.infer("acc_oldest", tensor, sequence_id=base + 1), "INVALID_ARGUMENT",
        f"sequence {base + 1}", "must specify the START flag",
    )
    either.infer("acc_oldest", tensor, sequence_id=base + 2, sequence_start=True)
    either.expect_error(
        lambda: either.infer("acc_oldest", tensor, sequence_id=base + 2, sequence_start=True), "INVALID_ARGUMENT",
        "already live",
    )
    # sequence_id 0 is "no sequence" to tritonclient, which then sends no sequence parameters at all.
    either.expect_error(lambda: either.infer("acc_oldest", tensor, sequence_id=0), "INVALID_ARGUMENT", "sequence_id")
    plain = [either.input("INPUT0", np.ones((1, 2), np.float32))]
    either.expect_error(
        lambda: either.infer("plain", plain, sequence_id=base + 3, sequence_start=True), "INVALID_ARGUMENT",
        "no sequence_batching",
    )
    two_rows = either.input("INPUT", np.ones((2, 1), np.float32))
    either.expect_error(
        lambda: either.infer("acc_oldest", [two_rows], sequence_id=base + 4, sequence_start=True), "INVALID_ARGUMENT",
        "one row per request",
    )
    either.infer("acc_oldest", tensor, sequence_id=base + 2, sequence_end=True)


def test_bad_sequence_requests_in_a_stream(server: RunningServer) -> None:
    """Over ModelStreamInfer each refusal is an error message in the stream, naming the sequence, and the
    stream carries on."""
    answers: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        def send(key: int, **flags: Any) -> Any:
            client.async_stream_infer("acc_oldest", [value_input(grpcclient, 1.0)], sequence_id=key, **flags)
            return answers.get(timeout=30)

        unknown = send(70_001)
        assert isinstance(unknown, Exception) and "sequence 70001" in str(unknown) and "START flag" in str(unknown)
        assert not isinstance(send(70_002, sequence_start=True), Exception)
        twice = send(70_002, sequence_start=True)
        assert isinstance(twice, Exception) and "already live" in str(twice)
        ended = send(70_002, sequence_end=True)
        assert not isinstance(ended, Exception) and ended.as_numpy("OUTPUT")[0, 0] == 2.0
    finally:
        client.stop_stream()
        client.close()


def http_infer(server: RunningServer, parameters: dict[str, Any]) -> tuple[int, str]:
    body = json.dumps({
        "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}], "parameters": parameters,
    })
    connection = http.client.HTTPConnection(server.http_url, timeout=10)
    try:
        connection.request("POST", "/v2/models/acc_oldest/infer", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())["error"] if response.status != 200 else ""
    finally:
        connection.close()


def grpc_infer(server: RunningServer, parameters: dict[str, service_pb2.InferParameter]) -> tuple[grpc.StatusCode, str]:
    request = service_pb2.ModelInferRequest(model_name="acc_oldest")
    tensor = request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 1])
    tensor.contents.fp32_contents.append(1.0)
    for key, value in parameters.items():
        request.parameters[key].CopyFrom(value)
    with grpc.insecure_channel(server.grpc_url) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        except grpc.RpcError as error:
            return error.code(), error.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(0, "non-zero"), ("", "1 to 256 characters"), (1.5, "float"), (True, "bool"), (-4, "non-zero uint64")],
    ids=["zero", "empty-string", "float", "bool", "negative"],
)
def test_a_wrong_sequence_id_is_refused(server: RunningServer, value: Any, fragment: str) -> None:
    """tritonclient never sends these, other clients may: raw JSON over HTTP, raw protobuf over gRPC."""
    status, message = http_infer(server, {"sequence_id": value, "sequence_start": True})
    assert status == 400 and "sequence_id" in message and fragment in message, (status, message)
    if isinstance(value, bool):
        param = service_pb2.InferParameter(bool_param=value)
    elif isinstance(value, float):
        param = service_pb2.InferParameter(double_param=value)
    elif isinstance(value, str):
        param = service_pb2.InferParameter(string_param=value)
    else:
        param = service_pb2.InferParameter(int64_param=value)
    code, details = grpc_infer(server, {"sequence_id": param, "sequence_start": service_pb2.InferParameter(bool_param=True)})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details, (code, details)


def test_a_uint64_id_beyond_int64_over_grpc(server: RunningServer) -> None:
    key = 2**64 - 5
    start = {"sequence_id": service_pb2.InferParameter(uint64_param=key), "sequence_start": service_pb2.InferParameter(bool_param=True)}
    assert grpc_infer(server, start) == (grpc.StatusCode.OK, "")
    end = {"sequence_id": service_pb2.InferParameter(uint64_param=key), "sequence_end": service_pb2.InferParameter(bool_param=True)}
    assert grpc_infer(server, end) == (grpc.StatusCode.OK, "")


def test_idle_sequences_are_released_and_counted(either: Client, server: RunningServer) -> None:
    key = f"idle-{either.protocol}"
    before = scrape(server.metrics_url)
    either.infer("acc_idle", [value_input(either.module, 1.0)], sequence_id=key, sequence_start=True)
    live = scrape(server.metrics_url)
    assert live.value("model_runtime_live_sequences", model="acc_idle", version="1") == 1
    starts = before.value("model_runtime_sequence_starts_total", model="acc_idle", version="1") or 0
    assert live.value("model_runtime_sequence_starts_total", model="acc_idle", version="1") == starts + 1
    released_before = before.value("model_runtime_sequence_idle_releases_total", model="acc_idle", version="1") or 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # released IDLE_US after its request; the metric says when
        after = scrape(server.metrics_url)
        if after.value("model_runtime_sequence_idle_releases_total", model="acc_idle", version="1") == released_before + 1:
            break
        time.sleep(0.05)
    assert after.value("model_runtime_live_sequences", model="acc_idle", version="1") == 0
    either.expect_error(
        lambda: either.infer("acc_idle", [value_input(either.module, 1.0)], sequence_id=key), "INVALID_ARGUMENT",
        "not live", f"released after {IDLE_US} us idle",
    )
    # The id starts afresh from the initial state.
    again = either.infer("acc_idle", [value_input(either.module, 7.0)], sequence_id=key, sequence_start=True, sequence_end=True)
    assert again.as_numpy("OUTPUT")[0, 0] == 7.0
    ended = scrape(server.metrics_url)
    assert ended.value("model_runtime_sequence_ends_total", model="acc_idle", version="1") >= 1



SWAP_TOKEN = "sequence-swap-token"


def test_swap_with_live_sequences_over_the_wire(tmp_path_factory: pytest.TempPathFactory) -> None:
    """tritonclient: two sequences live on version 1 (one of them on a gRPC stream), version 2 loaded
    through the repository API: the load returns, both sequences finish on version 1 with their own
    sums, a new sequence starts on version 2, and version 1 is unloaded once they have ended."""
    repo = tmp_path_factory.mktemp("swap-repo")
    save_accumulator(repo, "acc_swap", strategy="oldest")
    auth = {"Authorization": f"Bearer {SWAP_TOKEN}"}
    flags = ["--model-control-mode", "explicit", "--load-model", "acc_swap", "--admin-token", SWAP_TOKEN]
    with running_server(repo, tmp_path_factory.mktemp("swap-server"), flags) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        answers: queue.Queue[Any] = queue.Queue()
        stream = grpcclient.InferenceServerClient(server.grpc_url)
        stream.start_stream(callback=lambda result, error: answers.put(error or result))
        try:
            def on_stream(value: float, **flags: Any) -> Any:
                stream.async_stream_infer("acc_swap", [value_input(grpcclient, value)], sequence_id=2, **flags)
                answer = answers.get(timeout=30)
                assert not isinstance(answer, Exception), answer
                return answer

            def on_http(key: int, value: float, **flags: Any) -> Any:
                return http.infer("acc_swap", [value_input(httpclient, value)], sequence_id=key, **flags)

            def version_and_sum(result: Any) -> tuple[str, float]:
                response = result.get_response()
                version = response["model_version"] if isinstance(response, dict) else response.model_version
                return version, float(result.as_numpy("OUTPUT")[0, 0])

            assert version_and_sum(on_http(1, 1.0, sequence_start=True)) == ("1", 1.0)
            assert version_and_sum(on_stream(10.0, sequence_start=True)) == ("1", 10.0)
            save_accumulator(repo, "acc_swap", version=2, strategy="oldest")
            http.load_model("acc_swap", headers=auth)  # returns while version 1 still holds both sequences
            assert version_and_sum(on_http(3, 100.0, sequence_start=True)) == ("2", 100.0)
            assert version_and_sum(on_http(1, 2.0)) == ("1", 3.0)
            assert version_and_sum(on_stream(20.0)) == ("1", 30.0)
            index = {(row["name"], row.get("version", "")): row for row in http.get_model_repository_index(headers=auth)}
            assert index[("acc_swap", "1")]["state"] == "UNLOADING" and index[("acc_swap", "2")]["state"] == "READY"
            assert version_and_sum(on_http(1, 3.0, sequence_end=True)) == ("1", 6.0)
            assert version_and_sum(on_stream(30.0, sequence_end=True)) == ("1", 60.0)
            assert version_and_sum(on_http(3, 1.0, sequence_end=True)) == ("2", 101.0)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # version 1 is freed in the background after its last end
                index = {(r["name"], r.get("version", "")): r for r in http.get_model_repository_index(headers=auth)}
                if index[("acc_swap", "1")]["state"] == "UNAVAILABLE":
                    break
                time.sleep(0.05)
            assert index[("acc_swap", "1")]["state"] == "UNAVAILABLE", index
        finally:
            stream.stop_stream()
            stream.close()
            http.close()

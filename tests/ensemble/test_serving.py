"""Ensembles over the protocols, with tritonclient: HTTP, gRPC and gRPC streaming answers equal the
steps run by hand; the config and metadata say "ensemble" and list the steps (what perf_analyzer
reads); the composing models' statistics count ensemble traffic; a step's failure keeps its status.
Against one process and against --workers 3 (the ensemble runs in the engine process, so the front
ends forward it like any request)."""
from __future__ import annotations

import queue
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.ensemble.models import cls, pre, write_repository
from tests.server.conftest import Client
from tests.serving import RunningServer, running_server

RAW = np.linspace(-2, 2, 20, dtype=np.float32).reshape(5, 4)


@pytest.fixture(scope="module", params=[1, 3], ids=["workers1", "workers3"])
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    repository = write_repository(tmp_path_factory.mktemp("ensemble-repo"))
    with running_server(repository, tmp_path_factory.mktemp("ensemble-server"), workers=request.param) as running:
        yield running


@pytest.fixture(params=["http", "grpc"])
def either(request: pytest.FixtureRequest, server: RunningServer) -> Client:
    if request.param == "http":
        return Client("http", httpclient, httpclient.InferenceServerClient(server.http_url))
    return Client("grpc", grpcclient, grpcclient.InferenceServerClient(server.grpc_url))


def run(client: Client, model: str, name: str, data: np.ndarray, *outputs: str) -> dict[str, np.ndarray]:
    result = client.infer(model, [client.input(name, data)], outputs=[client.output(o) for o in outputs] or None)
    return {o: result.as_numpy(o) for o in outputs}


def test_answers_equal_the_steps_run_by_hand(either: Client) -> None:
    through = run(either, "pipeline", "RAW", RAW, "SCORES", "SCALED")
    scaled = run(either, "pre", "RAW", RAW, "SCALED")["SCALED"]
    scores = run(either, "cls", "FEATURES", scaled, "SCORES")["SCORES"]
    np.testing.assert_array_equal(through["SCALED"], scaled)
    np.testing.assert_allclose(through["SCORES"], scores, rtol=1e-6)
    np.testing.assert_allclose(through["SCORES"], cls(pre(RAW)), rtol=1e-5)
    # Only the outputs asked for come back.
    assert set(run(either, "pipeline", "RAW", RAW, "SCORES")) == {"SCORES"}


def test_streaming_answers_equal_the_steps(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for row in range(len(RAW)):
            tensor = grpcclient.InferInput("RAW", [1, 4], "FP32")
            tensor.set_data_from_numpy(RAW[row : row + 1])
            client.async_stream_infer("pipeline", [tensor], request_id=str(row))
        seen = {}
        for _ in range(len(RAW)):
            result, error = results.get(timeout=30)
            assert error is None, error
            seen[int(result.get_response().id)] = result.as_numpy("SCORES")  # type: ignore[attr-defined]
    finally:
        client.stop_stream()
    expected = cls(pre(RAW))
    assert sorted(seen) == list(range(len(RAW)))
    for row, scores in seen.items():
        np.testing.assert_allclose(scores, expected[row : row + 1], rtol=1e-5)


def test_config_and_metadata_show_the_ensemble(either: Client) -> None:
    metadata = either.model_metadata("pipeline")
    assert metadata["platform"] == "ensemble"
    assert metadata["inputs"] == [("RAW", "FP32", [-1, 4])]
    assert [t[0] for t in metadata["outputs"]] == ["SCORES", "SCALED"]
    config = either.model_config("pipeline")
    steps = config["ensemble_scheduling"]["step"]
    assert [(s["model_name"], int(s["model_version"]), s["input_map"], s["output_map"]) for s in steps] == [
        ("pre", -1, {"RAW": "RAW"}, {"SCALED": "SCALED"}),
        ("cls", -1, {"FEATURES": "SCALED"}, {"SCORES": "SCORES"}),
    ]
    assert either.triton.is_model_ready("pipeline")


def success_count(client: Client, model: str) -> int:
    stats = client.triton.get_inference_statistics(model)
    if client.protocol == "http":
        return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])
    return int(stats.model_stats[0].inference_stats.success.count)


def test_composing_models_statistics_count_ensemble_traffic(either: Client) -> None:
    before = {m: success_count(either, m) for m in ("pipeline", "pre", "cls")}
    for _ in range(3):
        run(either, "pipeline", "RAW", RAW[:2], "SCORES")
    after = {m: success_count(either, m) for m in ("pipeline", "pre", "cls")}
    assert {m: after[m] - before[m] for m in after} == {"pipeline": 3, "pre": 3, "cls": 3}


def test_a_step_failure_keeps_its_status_and_names_the_step(either: Client) -> None:
    either.expect_error(
        lambda: run(either, "guarded", "X", np.ones((8, 4), np.float32), "Y"),
        "INVALID_ARGUMENT",
        "model 'guarded' version 1: step 0 (model 'failing')",
    )
    with pytest.raises(InferenceServerException) as caught:
        run(either, "guarded", "X", np.full((1, 4), 150, np.float32), "Y")
    assert str(caught.value.status()) in ("500", "StatusCode.INTERNAL"), caught.value
    assert "step 0 (model 'failing')" in caught.value.message()

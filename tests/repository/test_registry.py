"""Registry behaviour seen from outside: rollback, labels, and why a version is not serving."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.repository.models import scale_bytes
from tests.server.test_repository import AUTH_HTTP, TOKEN, _post, config_json, infer_http, make_repo
from tests.serving import RunningServer, running_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    repo = make_repo(tmp_path / "repo")
    with running_server(
        repo, tmp_path / "srv",
        ["--model-control-mode", "explicit", "--load-model", "scale", "--admin-token", TOKEN],
    ) as running:
        yield running


def _load_versions(client: httpclient.InferenceServerClient, versions: list[int]) -> None:
    client.load_model(
        "scale", headers=AUTH_HTTP,
        config=config_json(max_batch_size=8, version_policy={"specific": {"versions": versions}}),
    )


def test_rollback_restores_labels_and_weights(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    _load_versions(client, [1, 2])
    assert _post(server, "/v2/repository/models/scale/traffic", {"weights": {"1": 90, "2": 10}}, AUTH_HTTP)[0] == 200
    assert _post(server, "/v2/repository/models/scale/labels", {"labels": {"stable": 1, "canary": 2}}, AUTH_HTTP)[0] == 200
    _load_versions(client, [2])
    with pytest.raises(InferenceServerException):
        infer_http(client, "scale", "stable")  # version 1 left, and its label with it
    status, body = _post(server, "/v2/repository/models/scale/rollback", {}, AUTH_HTTP)
    assert status == 200 and json.loads(body) == {"versions": ["1", "2"]}
    assert infer_http(client, "scale", "stable") == ("1", 1.0)
    assert infer_http(client, "scale", "canary") == ("2", 2.0)
    rows = {r["version"]: r for r in client.get_model_repository_index(headers=AUTH_HTTP) if r["name"] == "scale"}
    assert rows["1"]["labels"] == ["stable"] and rows["2"]["labels"] == ["canary"]
    assert rows["1"]["traffic_weight"] == pytest.approx(0.9)


def test_rollback_after_unload_restores_labels(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    assert _post(server, "/v2/repository/models/scale/labels", {"labels": {"stable": 2}}, AUTH_HTTP)[0] == 200
    client.unload_model("scale", headers=AUTH_HTTP)
    assert _post(server, "/v2/repository/models/scale/rollback", {}, AUTH_HTTP)[0] == 200
    assert infer_http(client, "scale", "stable") == ("2", 2.0)


def test_metadata_for_a_label_names_its_version(server: RunningServer) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    _load_versions(http, [1, 2])
    assert _post(server, "/v2/repository/models/scale/labels", {"labels": {"canary": 2, "stable": 1}}, AUTH_HTTP)[0] == 200
    assert http.get_model_metadata("scale", "canary")["versions"] == ["2"]
    assert http.get_model_metadata("scale", "stable")["versions"] == ["1"]
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert list(grpc.get_model_metadata("scale", "canary").versions) == ["2"]


def test_memory_budget_refusal_is_in_the_index(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    one_model = len(scale_bytes(1.0))
    with running_server(
        repo, tmp_path / "srv",
        ["--model-control-mode", "explicit", "--load-model", "scale", "--model-memory-budget-bytes", str(one_model + 10)],
    ) as running:
        client = httpclient.InferenceServerClient(running.http_url)
        with pytest.raises(InferenceServerException):
            client.load_model("other")
        rows = [r for r in client.get_model_repository_index() if r["name"] == "other"]
        assert rows and rows[0]["state"] == "UNAVAILABLE" and "memory budget" in rows[0]["reason"], rows
        with pytest.raises(InferenceServerException) as caught:
            infer_http(client, "other")
        assert "memory budget" in caught.value.message()


def test_memory_budget_at_start_up_says_why(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with running_server(repo, tmp_path / "srv", ["--model-memory-budget-bytes", "10"]) as running:
        client = httpclient.InferenceServerClient(running.http_url)
        rows = [r for r in client.get_model_repository_index() if r["name"] == "scale"]
        assert rows and all("memory budget" in r["reason"] for r in rows), rows
        with pytest.raises(InferenceServerException) as caught:
            infer_http(client, "scale")
        assert caught.value.status() == "503" and "memory budget" in caught.value.message()

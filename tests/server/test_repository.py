"""The admin API (Triton's repository extension and our swap controls) against real servers."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from runtime.examples import save_model
from tests.repository.models import build_scale, scale_bytes
from tests.serving import RunningServer, running_server

TOKEN = "s3cret-token"
AUTH_HTTP = {"Authorization": f"Bearer {TOKEN}"}
AUTH_GRPC = {"authorization": f"Bearer {TOKEN}"}
ALL_VERSIONS = 'version_policy { all { } }\n'


def make_repo(root: Path) -> Path:
    save_model(build_scale(1.0), root, "scale", 1, config_pbtxt='max_batch_size: 8\n')
    save_model(build_scale(2.0), root, "scale", 2)
    save_model(build_scale(5.0), root, "other", 1)
    return root


def infer_http(client: httpclient.InferenceServerClient, model: str, version: str = "") -> tuple[str, float]:
    data = np.ones((1, 4), dtype=np.float32)
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer(model, [tensor], model_version=version)
    return result.get_response()["model_version"], float(result.as_numpy("OUTPUT0")[0, 0])


def config_json(**fields: object) -> str:
    return json.dumps(fields)


@pytest.fixture
def explicit_server(tmp_path: Path) -> Iterator[RunningServer]:
    repo = make_repo(tmp_path / "repo")
    with running_server(
        repo, tmp_path / "srv",
        ["--model-control-mode", "explicit", "--load-model", "scale", "--admin-token", TOKEN],
    ) as server:
        yield server


def test_index_and_explicit_loading(explicit_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    index = {(row["name"], row.get("version", "")): row for row in client.get_model_repository_index(headers=AUTH_HTTP)}
    assert index[("scale", "2")]["state"] == "READY"  # latest 1 by default
    assert index[("other", "")]["state"] == "UNAVAILABLE" and index[("other", "")]["reason"] == "not loaded"
    assert not client.is_model_ready("other")
    client.load_model("other", headers=AUTH_HTTP)
    assert client.is_model_ready("other")
    assert infer_http(client, "other") == ("1", 5.0)
    ready_only = client.get_model_repository_index(headers=AUTH_HTTP, query_params=None)
    assert any(row["name"] == "other" and row["state"] == "READY" for row in ready_only)


def test_config_override_switches_version_and_rollback_restores(explicit_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    assert infer_http(client, "scale") == ("2", 2.0)
    client.load_model(
        "scale", headers=AUTH_HTTP,
        config=config_json(max_batch_size=8, version_policy={"specific": {"versions": [1]}}),
    )
    assert infer_http(client, "scale") == ("1", 1.0)
    assert client.is_server_ready()
    # version 2 was drained and freed
    with pytest.raises(InferenceServerException):
        infer_http(client, "scale", "2")
    status = _post(explicit_server, "/v2/repository/models/scale/rollback", {}, AUTH_HTTP)
    assert status[0] == 200 and json.loads(status[1]) == {"versions": ["2"]}
    assert infer_http(client, "scale") == ("2", 2.0)


def test_files_write_a_new_version_and_swap_to_it(explicit_server: RunningServer, tmp_path: Path) -> None:
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    client.load_model(
        "scale", headers=AUTH_HTTP,
        config=config_json(max_batch_size=8),
        files={"file:3/model.onnx": scale_bytes(3.0)},
    )
    assert infer_http(client, "scale") == ("3", 3.0)
    assert (tmp_path / "repo" / "scale" / "3" / "model.onnx").read_bytes() == scale_bytes(3.0)
    assert not list((tmp_path / "repo" / "scale").glob(".*")) and not list((tmp_path / "repo").glob(".*"))


def test_failed_load_leaves_serving_version_untouched(explicit_server: RunningServer, tmp_path: Path) -> None:
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model(
            "scale", headers=AUTH_HTTP, config=config_json(max_batch_size=8),
            files={"file:4/model.onnx": b"definitely not onnx"},
        )
    assert "not a readable ONNX model" in caught.value.message()
    assert infer_http(client, "scale") == ("2", 2.0)
    index = client.get_model_repository_index(headers=AUTH_HTTP)
    failed = [row for row in index if row["name"] == "scale" and row.get("version") == "4"]
    assert failed and failed[0]["state"] == "UNAVAILABLE" and "ONNX" in failed[0]["reason"]
    # A config that does not match the model fails the same way.
    with pytest.raises(InferenceServerException) as caught:
        client.load_model(
            "scale", headers=AUTH_HTTP,
            config=config_json(
                max_batch_size=8,
                version_policy={"specific": {"versions": [2]}},
                input=[{"name": "WRONG", "data_type": "TYPE_FP32", "dims": [4]}],
            ),
        )
    assert "WRONG" in caught.value.message()
    assert infer_http(client, "scale") == ("2", 2.0)


def test_unload(explicit_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    client.unload_model("scale", headers=AUTH_HTTP)
    assert not client.is_model_ready("scale")
    with pytest.raises(InferenceServerException) as caught:
        infer_http(client, "scale")
    assert caught.value.status() == "503"
    assert client.is_server_ready()


def test_traffic_split_and_labels(explicit_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    client.load_model(
        "scale", headers=AUTH_HTTP, config=config_json(max_batch_size=8, version_policy={"all": {}})
    )
    assert _post(explicit_server, "/v2/repository/models/scale/traffic", {"weights": {"1": 3, "2": 1}}, AUTH_HTTP)[0] == 200
    versions = [infer_http(client, "scale")[0] for _ in range(40)]
    assert versions.count("1") == 30 and versions.count("2") == 10
    index = [r for r in client.get_model_repository_index(headers=AUTH_HTTP) if r["name"] == "scale"]
    assert {r["version"]: r["traffic_weight"] for r in index} == {"1": 0.75, "2": 0.25}
    assert _post(explicit_server, "/v2/repository/models/scale/labels", {"labels": {"stable": 1, "canary": 2}}, AUTH_HTTP)[0] == 200
    assert infer_http(client, "scale", "canary") == ("2", 2.0)
    assert infer_http(client, "scale", "stable") == ("1", 1.0)
    with pytest.raises(InferenceServerException) as caught:
        infer_http(client, "scale", "beta")
    assert caught.value.status() == "404"
    status, body = _post(explicit_server, "/v2/repository/models/scale/traffic", {"weights": {"7": 1}}, AUTH_HTTP)
    assert status == 400 and "version 7 is not serving" in json.loads(body)["error"]


def test_grpc_admin(explicit_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(explicit_server.grpc_url)
    index = client.get_model_repository_index(headers=AUTH_GRPC)
    assert any(m.name == "scale" and m.version == "2" and m.state == "READY" for m in index.models)
    client.load_model("other", headers=AUTH_GRPC)
    assert client.is_model_ready("other")
    client.load_model(
        "scale", headers=AUTH_GRPC,
        config=config_json(max_batch_size=8, version_policy={"specific": {"versions": [1]}}),
    )
    assert client.get_model_metadata("scale").versions == ["1"]
    client.unload_model("other", headers=AUTH_GRPC)
    assert not client.is_model_ready("other")
    with pytest.raises(InferenceServerException) as caught:
        client.unload_model("scale", headers={"authorization": "Bearer wrong"})
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    assert client.is_model_ready("scale")


def test_token_is_required_and_changes_nothing(explicit_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    for headers in (None, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model("scale", headers=headers)
        assert caught.value.status() == "401"
        with pytest.raises(InferenceServerException):
            client.get_model_repository_index(headers=headers)
    assert client.is_model_ready("scale")


@pytest.mark.parametrize(
    "path", ["../escape/model.onnx", "/etc/model.onnx", "1/../../x.onnx", "model.onnx", "01/model.onnx"]
)
def test_file_paths_are_validated(explicit_server: RunningServer, tmp_path: Path, path: str) -> None:
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("scale", headers=AUTH_HTTP, config=config_json(max_batch_size=8), files={f"file:{path}": b"x"})
    assert caught.value.status() == "400"
    assert not (tmp_path / "escape").exists()
    assert infer_http(client, "scale") == ("2", 2.0)


def test_model_names_are_validated(explicit_server: RunningServer) -> None:
    status, body = _post(explicit_server, "/v2/repository/models/..%2F..%2Fetc/load", {}, AUTH_HTTP)
    assert status in (400, 404)
    status, body = _post(explicit_server, "/v2/repository/models/a..b/load", {}, AUTH_HTTP)
    assert status == 404  # a valid name, but no such model


def test_none_mode_refuses_changes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with running_server(repo, tmp_path / "srv") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_model_ready("other")
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model("other")
        assert caught.value.status() == "409" and "none" in caught.value.message()
        assert client.is_model_ready("other")


def test_memory_budget_refuses_a_load(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    one_model = len(scale_bytes(1.0))
    with running_server(
        repo, tmp_path / "srv",
        ["--model-control-mode", "explicit", "--load-model", "scale", "--model-memory-budget-bytes", str(one_model + 10)],
    ) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        with pytest.raises(InferenceServerException) as caught:
            client.load_model("other")
        assert caught.value.status() == "503" and "memory budget" in caught.value.message()
        assert infer_http(client, "scale") == ("2", 2.0)


def test_separate_admin_port(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with running_server(
        repo, tmp_path / "srv", ["--model-control-mode", "explicit", "--load-model", "scale", "--admin-port", "0"]
    ) as server:
        ports = json.loads((tmp_path / "srv" / "ports.json").read_text())
        public = httpclient.InferenceServerClient(server.http_url)
        with pytest.raises(InferenceServerException) as caught:
            public.load_model("other")
        assert caught.value.status() == "404"
        admin = httpclient.InferenceServerClient(f"127.0.0.1:{ports['admin']}")
        admin.load_model("other")
        assert public.is_model_ready("other")
        with pytest.raises(InferenceServerException) as caught:
            grpcclient.InferenceServerClient(server.grpc_url).load_model("other")
        assert caught.value.status() == "StatusCode.UNIMPLEMENTED"


def test_poll_mode_follows_the_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with running_server(repo, tmp_path / "srv", ["--model-control-mode", "poll", "--repository-poll-secs", "0.3", "--repository-poll-quiet-secs", "0.5"]) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert infer_http(client, "scale") == ("2", 2.0)
        # A half-written version: the file keeps growing between scans, so it is never loaded.
        partial = repo / "scale" / "3" / "model.onnx"
        partial.parent.mkdir()
        for chunk in range(4):
            with open(partial, "ab") as handle:
                handle.write(b"\0" * 10)
            time.sleep(0.3)  # the writer's pace: one scan per chunk
            assert infer_http(client, "scale")[0] == "2"
            # Serving version 2 alone would not show it: a premature try of version 3 fails and keeps 2
            # serving. The index shows any version the poller tried.
            tried = [r for r in client.get_model_repository_index() if r["name"] == "scale" and r.get("version") == "3"]
            assert not tried, f"the half-written version was tried: {tried}"
        partial.write_bytes(scale_bytes(3.0))
        _wait_for(lambda: infer_http(client, "scale") == ("3", 3.0))
        # config change: serve every version
        (repo / "scale" / "config.pbtxt").write_text("max_batch_size: 8\n" + ALL_VERSIONS)
        _wait_for(lambda: client.get_model_metadata("scale")["versions"] == ["1", "2", "3"])
        # a removed model is unloaded
        for path in sorted((repo / "other").rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (repo / "other").rmdir()
        _wait_for(lambda: not client.is_model_ready("other"))
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model("scale")
        assert caught.value.status() == "409"


def _wait_for(condition, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except InferenceServerException:
            pass
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _post(server: RunningServer, path: str, body: dict[str, object], headers: dict[str, str]) -> tuple[int, bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", path, body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()

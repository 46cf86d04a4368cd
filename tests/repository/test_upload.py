"""Hostile admin calls: uploads that must never touch the repository, and parameters of every wrong type.

Every refused call is checked against a byte-for-byte picture of the repository taken just before
it (snapshot.tree), and the serving version must keep answering with the same results. Each case
runs over both admin transports (HTTP JSON and gRPC) where both can carry it; raw requests are sent
where tritonclient would refuse to build the bad value.
"""
from __future__ import annotations

import base64
import http.client
import json
import time
from contextlib import AbstractContextManager
from urllib.parse import quote
from pathlib import Path
from typing import Iterator, Union

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from runtime.examples import save_model
from tests.repository.models import build_scale, scale_bytes
from tests.repository.snapshot import tree
from tests.serving import RunningServer, running_server

TOKEN = "upload-token"
AUTH_HTTP = {"Authorization": f"Bearer {TOKEN}"}
AUTH_GRPC = (("authorization", f"Bearer {TOKEN}"),)
CONFIG = json.dumps({"max_batch_size": 8})
GARBAGE = b"definitely not an ONNX model"
TRANSPORTS = ["http", "grpc"]

# A parameter value as a test writes it: bytes travel as base64 text over HTTP and as bytes_param
# over gRPC; str, bool and int as themselves (string_param, bool_param, int64_param); None as JSON
# null (HTTP) or a parameter with no value set (gRPC); lists and dicts only over HTTP.
Value = Union[bytes, str, bool, int, float, None, list, dict]  # type: ignore[type-arg]

HTTP_CODES = {200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND",
              409: "FAILED_PRECONDITION", 500: "INTERNAL", 503: "UNAVAILABLE"}


def make_repo(root: Path) -> Path:
    save_model(build_scale(1.0), root, "scale", 1, config_pbtxt="max_batch_size: 8\n")
    save_model(build_scale(2.0), root, "scale", 2)
    save_model(build_scale(5.0), root, "other", 1)
    return root


def start(repo: Path, work: Path) -> AbstractContextManager[RunningServer]:
    return running_server(repo, work, ["--model-control-mode", "explicit", "--load-model", "scale", "--admin-token", TOKEN])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    """One server for the cases that must change nothing (each checks its own before/after picture)."""
    root = tmp_path_factory.mktemp("upload")
    repo = make_repo(root / "repo")
    with start(repo, root / "srv") as server:
        yield server, repo


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    repo = make_repo(tmp_path / "repo")
    with start(repo, tmp_path / "srv") as server:
        yield server, repo


# ---- clients --------------------------------------------------------------------------------------


def http_post(server: RunningServer, path: str, body: object) -> tuple[str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        payload = body if isinstance(body, bytes) else json.dumps(body)
        connection.request("POST", path, body=payload, headers={**AUTH_HTTP, "Content-Type": "application/json"})
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
        message = json.loads(text).get("error", "") if text.strip().startswith("{") else text
        return HTTP_CODES.get(response.status, str(response.status)), message
    finally:
        connection.close()


def grpc_parameter(value: Value) -> service_pb2.ModelRepositoryParameter:
    if isinstance(value, bytes):
        return service_pb2.ModelRepositoryParameter(bytes_param=value)
    if isinstance(value, bool):
        return service_pb2.ModelRepositoryParameter(bool_param=value)
    if isinstance(value, int):
        return service_pb2.ModelRepositoryParameter(int64_param=value)
    if isinstance(value, str):
        return service_pb2.ModelRepositoryParameter(string_param=value)
    assert value is None, f"gRPC cannot carry {type(value).__name__}"
    return service_pb2.ModelRepositoryParameter()


def grpc_load(server: RunningServer, model: str, parameters: dict[str, Value]) -> tuple[str, str]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.RepositoryModelLoadRequest(model_name=model)
        for key, value in parameters.items():
            request.parameters[key].CopyFrom(grpc_parameter(value))
        try:
            stub.RepositoryModelLoad(request, metadata=AUTH_GRPC, timeout=60)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
        return "OK", ""


def http_value(value: Value) -> object:
    return base64.b64encode(value).decode() if isinstance(value, bytes) else value


def load(transport: str, server: RunningServer, model: str, parameters: dict[str, Value]) -> tuple[str, str]:
    if transport == "grpc":
        return grpc_load(server, model, parameters)
    body = {"parameters": {key: http_value(value) for key, value in parameters.items()}}
    return http_post(server, f"/v2/repository/models/{model}/load", body)


def infer(server: RunningServer, model: str = "scale") -> tuple[str, float]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        result = client.infer(model, [tensor])
        return result.get_response()["model_version"], float(result.as_numpy("OUTPUT0")[0, 0])
    finally:
        client.close()


def refused(transport: str, server: RunningServer, repo: Path, model: str, parameters: dict[str, Value]) -> tuple[str, str]:
    """Make the call; check it left the repository byte for byte as it was and scale still serves v2."""
    before = tree(repo)
    code, message = load(transport, server, model, parameters)
    assert code != "OK", f"accepted: {parameters.keys()}"
    assert tree(repo) == before, "a refused load changed the repository"
    assert infer(server) == ("2", 2.0)
    return code, message


# ---- uploads over an existing version -----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("path", ["1/model.onnx", "2/model.onnx", "2/sub/dir/file.bin", "2/new.txt"])
def test_an_upload_naming_an_existing_version_is_refused(
    shared: tuple[RunningServer, Path], transport: str, path: str
) -> None:
    server, repo = shared
    code, message = refused(transport, server, repo, "scale", {"config": CONFIG, f"file:{path}": GARBAGE})
    version = path.split("/")[0]
    assert code == "FAILED_PRECONDITION"
    assert "'scale'" in message and f"version {version}" in message and "already in the repository" in message
    # The disk is intact: a reload from it (same config, so version 2 is read again only if changed) serves.
    assert load(transport, server, "scale", {"config": CONFIG}) == ("OK", "")
    assert infer(server) == ("2", 2.0)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("path", ["./2/model.onnx", "2//model.onnx", "2/./model.onnx", "2/model.onnx/", "/2/model.onnx"])
def test_other_spellings_of_a_version_path_are_refused(
    shared: tuple[RunningServer, Path], transport: str, path: str
) -> None:
    server, repo = shared
    code, message = refused(transport, server, repo, "scale", {"config": CONFIG, f"file:{path}": GARBAGE})
    assert code == "INVALID_ARGUMENT" and "'scale'" in message and "file path" in message


# ---- failed new versions ------------------------------------------------------------------------

WARMUP_MISMATCH = json.dumps({
    "max_batch_size": 8,
    "model_warmup": [{"name": "w", "batch_size": 1, "inputs": {"INPUT0": {"data_type": "TYPE_FP32", "dims": [5], "zero_data": True}}}],
})
WRONG_INPUT = json.dumps({"max_batch_size": 8, "input": [{"name": "WRONG", "data_type": "TYPE_FP32", "dims": [4]}]})
OTHER_POLICY = json.dumps({"max_batch_size": 8, "version_policy": {"specific": {"versions": [2]}}})

FAILED_LOADS = {
    "garbage-onnx": {"config": CONFIG, "file:3/model.onnx": GARBAGE},
    "wrong-config": {"config": WRONG_INPUT, "file:3/model.onnx": scale_bytes(3.0)},
    "warm-up-fails": {"config": WARMUP_MISMATCH, "file:3/model.onnx": scale_bytes(3.0)},
    "not-selected": {"config": OTHER_POLICY, "file:3/model.onnx": scale_bytes(3.0)},
    "no-model-file": {"config": CONFIG, "file:3/labels.txt": b"a\nb\n"},
    "two-versions-one-bad": {"config": json.dumps({"max_batch_size": 8, "version_policy": {"all": {}}}),
                             "file:3/model.onnx": scale_bytes(3.0), "file:4/model.onnx": GARBAGE},
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(FAILED_LOADS))
def test_a_failed_new_version_leaves_the_repository_as_it_was(
    shared: tuple[RunningServer, Path], transport: str, case: str
) -> None:
    server, repo = shared
    code, message = refused(transport, server, repo, "scale", FAILED_LOADS[case])
    assert code == "INVALID_ARGUMENT" and "scale" in message
    # Nothing of it stayed behind: a config-only load (latest version) still finds version 2.
    assert load(transport, server, "scale", {"config": CONFIG}) == ("OK", "")
    assert infer(server) == ("2", 2.0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_failed_upload_of_a_new_model_leaves_nothing(shared: tuple[RunningServer, Path], transport: str) -> None:
    server, repo = shared
    code, message = refused(transport, server, repo, "brand_new", {"config": CONFIG, "file:1/model.onnx": GARBAGE})
    assert code == "INVALID_ARGUMENT" and "ONNX" in message
    assert not (repo / "brand_new").exists()


def test_memory_budget_refusal_leaves_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    budget = len(scale_bytes(1.0)) + 10  # room for the serving version only
    with running_server(
        repo, tmp_path / "srv",
        ["--model-control-mode", "explicit", "--load-model", "scale", "--model-memory-budget-bytes", str(budget)],
    ) as server:
        for transport in TRANSPORTS:
            code, message = refused(transport, server, repo, "scale", {"config": CONFIG, "file:3/model.onnx": scale_bytes(3.0)})
            assert code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED") and "memory budget" in message  # 503 over HTTP


def test_refused_uploads_then_a_restart_still_serves(tmp_path: Path) -> None:
    """Every kind of refused upload in a row, then the same repository served by a new process."""
    repo = make_repo(tmp_path / "repo")
    before = tree(repo)
    with start(repo, tmp_path / "srv") as server:
        for transport in TRANSPORTS:
            for path in ["2/model.onnx", "./2/model.onnx", "2//model.onnx", "2/./model.onnx", "2/sub/dir/file.bin", "3/model.onnx"]:
                refused(transport, server, repo, "scale", {"config": "{}", f"file:{path}": GARBAGE})
    assert tree(repo) == before
    with start(repo, tmp_path / "srv2") as server:
        assert infer(server) == ("2", 2.0)


# ---- successful uploads -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_new_version_lands_whole_and_survives_a_restart(tmp_path: Path, transport: str) -> None:
    repo = make_repo(tmp_path / "repo")
    before = tree(repo)
    with start(repo, tmp_path / "srv") as server:
        if transport == "grpc":
            grpcclient.InferenceServerClient(server.grpc_url).load_model(
                "scale", headers=dict(AUTH_GRPC), config=CONFIG,
                files={"file:3/model.onnx": scale_bytes(3.0), "file:3/sub/notes.txt": b"v3\n"},
            )
        else:
            client = httpclient.InferenceServerClient(server.http_url)
            client.load_model(
                "scale", headers=AUTH_HTTP, config=CONFIG,
                files={"file:3/model.onnx": scale_bytes(3.0), "file:3/sub/notes.txt": b"v3\n"},
            )
            client.close()
        assert infer(server) == ("3", 3.0)
        after = tree(repo)
        added = {path: after[path] for path in set(after) - set(before)}
        assert {path: what for path, what in after.items() if path in before} == before
        assert sorted(added) == ["scale/3", "scale/3/model.onnx", "scale/3/sub", "scale/3/sub/notes.txt"]
        assert (repo / "scale" / "3" / "model.onnx").read_bytes() == scale_bytes(3.0)
        # The same version again is now an existing one: refused, the landed files untouched.
        code, _ = refused_at(transport, server, repo, {"config": CONFIG, "file:3/model.onnx": GARBAGE}, ("3", 3.0))
        assert code == "FAILED_PRECONDITION"
    with start(repo, tmp_path / "srv2") as server:
        assert infer(server) == ("3", 3.0)


def refused_at(
    transport: str, server: RunningServer, repo: Path, parameters: dict[str, Value], serving: tuple[str, float]
) -> tuple[str, str]:
    before = tree(repo)
    code, message = load(transport, server, "scale", parameters)
    assert code != "OK" and tree(repo) == before and infer(server) == serving
    return code, message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_upload_can_create_a_model(tmp_path: Path, transport: str) -> None:
    repo = make_repo(tmp_path / "repo")
    with start(repo, tmp_path / "srv") as server:
        assert load(transport, server, "made", {"config": CONFIG, "file:1/model.onnx": scale_bytes(7.0)}) == ("OK", "")
        assert infer(server, "made") == ("1", 7.0)
        assert sorted(p for p in tree(repo) if p.startswith("made")) == ["made", "made/1", "made/1/model.onnx"]
        assert not [p for p in tree(repo) if ".upload" in p]


# ---- parameters of the wrong type or value ------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
BAD_PATHS = {
    "nul": "3/model\x00.onnx",
    "control": "3/model\n.onnx",
    "absolute": "/etc/model.onnx",
    "dotdot": "3/../../x.onnx",
    "backslash": "3\\model.onnx",
    "empty-segment": "3//model.onnx",
    "trailing-slash": "3/",
    "no-file": "3",
    "no-version": "model.onnx",
    "leading-zero": "03/model.onnx",
    "zero": "0/model.onnx",
    "negative": "-3/model.onnx",
    "huge-version": "99999999999999999999/model.onnx",
    "long-name": "3/" + "a" * 300,
    "long-path": "3/" + "/".join(["d" * 200] * 20) + "/m.onnx",
    "empty": "",
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_bad_file_paths_are_invalid_argument(shared: tuple[RunningServer, Path], transport: str, case: str) -> None:
    server, repo = shared
    code, message = refused(transport, server, repo, "scale", {"config": CONFIG, f"file:{BAD_PATHS[case]}": GARBAGE})
    assert code == "INVALID_ARGUMENT" and "'scale'" in message, message
    assert len(message) < 600  # the client's 4 KB path is not echoed in full
    assert not [p for p in tree(repo) if ".upload" in p or ".incoming" in p]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_path_that_is_both_file_and_directory_is_invalid_argument(
    shared: tuple[RunningServer, Path], transport: str
) -> None:
    server, repo = shared
    code, message = refused(
        transport, server, repo, "scale", {"config": CONFIG, "file:3/a": b"x", "file:3/a/b": b"y", "file:3/model.onnx": scale_bytes(3.0)}
    )
    assert code == "INVALID_ARGUMENT" and "both a file and a directory" in message


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", ["fresh\n", "fresh\x00", ".hidden", "a" * 129], ids=["newline", "nul", "dot", "long"])
def test_an_upload_cannot_create_a_model_of_a_bad_name(shared: tuple[RunningServer, Path], transport: str, name: str) -> None:
    server, repo = shared
    parameters: dict[str, Value] = {"config": CONFIG, "file:1/model.onnx": scale_bytes(3.0)}
    if transport == "http":
        before = tree(repo)
        body = {"parameters": {key: http_value(value) for key, value in parameters.items()}}
        code, message = http_post(server, f"/v2/repository/models/{quote(name, safe='')}/load", body)
        assert code in ("INVALID_ARGUMENT", "NOT_FOUND") and tree(repo) == before, message
    else:
        code, message = refused(transport, server, repo, name, parameters)
        assert code == "INVALID_ARGUMENT" and "invalid model name" in message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_too_many_files_is_invalid_argument(shared: tuple[RunningServer, Path], transport: str) -> None:
    server, repo = shared
    files: dict[str, Value] = {f"file:3/part{i}.bin": b"x" for i in range(1025)}
    code, message = refused(transport, server, repo, "scale", {"config": CONFIG, **files})
    assert code == "INVALID_ARGUMENT" and "1025 uploaded files" in message


HTTP_BAD_PARAMETERS: dict[str, dict[str, Value]] = {
    "file-number": {"config": CONFIG, "file:3/model.onnx": 5},
    "file-null": {"config": CONFIG, "file:3/model.onnx": None},
    "file-list": {"config": CONFIG, "file:3/model.onnx": [1, 2]},
    "file-object": {"config": CONFIG, "file:3/model.onnx": {"a": 1}},
    "file-bool": {"config": CONFIG, "file:3/model.onnx": True},
    "file-not-base64": {"config": CONFIG, "file:3/model.onnx": "not base64 !!"},
    "file-non-ascii": {"config": CONFIG, "file:3/model.onnx": "é" * 8},
    "file-without-config": {"file:3/model.onnx": scale_bytes(3.0)},
    "config-number": {"config": 5},
    "config-null": {"config": None},
    "config-object": {"config": {"max_batch_size": 8}},
    "config-list": {"config": [CONFIG]},
    "config-not-json": {"config": "max_batch_size: 8"},
    "config-json-list": {"config": "[1]"},
    "config-json-string": {"config": '"x"'},
    "config-json-null": {"config": "null"},
    "config-deep": {"config": DEEP},
    "config-deep-object": {"config": '{"input": ' + DEEP + "}"},
    "config-wrong-field-type": {"config": '{"max_batch_size": "eight"}'},
    "config-wrong-shape": {"config": '{"input": 5}'},
    "config-unknown-field": {"config": '{"no_such_field": 1}'},
    "config-huge-number": {"config": '{"max_batch_size": 1e999}'},
    "config-nan": {"config": '{"max_batch_size": NaN}'},
    "unknown-parameter": {"config": CONFIG, "colour": "blue"},
}


@pytest.mark.parametrize("case", sorted(HTTP_BAD_PARAMETERS))
def test_http_load_parameters_of_the_wrong_type(shared: tuple[RunningServer, Path], case: str) -> None:
    server, repo = shared
    code, message = refused("http", server, repo, "scale", HTTP_BAD_PARAMETERS[case])
    assert code == "INVALID_ARGUMENT" and "'scale'" in message, message


@pytest.mark.parametrize("parameters", [[], "x", None, 5, [{"config": CONFIG}]], ids=["list", "string", "null", "number", "list-of-object"])
def test_http_parameters_must_be_an_object(shared: tuple[RunningServer, Path], parameters: object) -> None:
    server, repo = shared
    before = tree(repo)
    code, message = http_post(server, "/v2/repository/models/scale/load", {"parameters": parameters})
    assert code == "INVALID_ARGUMENT" and "parameters" in message
    assert tree(repo) == before and infer(server) == ("2", 2.0)


GRPC_BAD_PARAMETERS: dict[str, dict[str, Value]] = {
    "file-string": {"config": CONFIG, "file:3/model.onnx": base64.b64encode(scale_bytes(3.0)).decode()},
    "file-bool": {"config": CONFIG, "file:3/model.onnx": True},
    "file-int64": {"config": CONFIG, "file:3/model.onnx": 7},
    "file-unset": {"config": CONFIG, "file:3/model.onnx": None},
    "config-bytes": {"config": CONFIG.encode()},
    "config-int64": {"config": 8},
    "config-bool": {"config": True},
    "config-unset": {"config": None},
    "config-deep": {"config": DEEP},
    "action-int64": {"action": 1},
    "action-unset": {"action": None},
    "action-unknown": {"action": "explode"},
}


@pytest.mark.parametrize("case", sorted(GRPC_BAD_PARAMETERS))
def test_grpc_load_parameters_of_the_wrong_type(shared: tuple[RunningServer, Path], case: str) -> None:
    server, repo = shared
    code, message = refused("grpc", server, repo, "scale", GRPC_BAD_PARAMETERS[case])
    assert code == "INVALID_ARGUMENT" and "scale" in message, message


# ---- traffic and labels -------------------------------------------------------------------------

BAD_WEIGHTS: dict[str, object] = {
    "not-object": [1, 2],
    "string": "1:3",
    "null": None,
    "key-not-number": {"one": 1},
    "key-negative": {"-1": 1},
    "key-fraction": {"1.5": 1},
    "key-superscript": {"²": 1},
    "key-thousands-of-digits": {"9" * 5000: 1},
    "key-newline": {"2\n": 1},
    "weight-string": {"2": "1"},
    "weight-bool": {"2": True},
    "weight-null": {"2": None},
    "weight-list": {"2": [1]},
    "weight-negative": {"2": -1},
    "weight-huge-int": {"2": 10**30},
    "weight-huge-float": {"1": 1e308, "2": 1e308},
    "all-zero": {"2": 0},
    "not-serving": {"7": 1},
}


def traffic_call(transport: str, server: RunningServer, action: str, value: object) -> tuple[str, str]:
    if transport == "http":
        return http_post(server, f"/v2/repository/models/scale/{action}", {"weights" if action == "traffic" else "labels": value})
    return grpc_load(server, "scale", {"action": action, action: json.dumps(value)})


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_bad_traffic_weights_are_invalid_argument(shared: tuple[RunningServer, Path], transport: str, case: str) -> None:
    server, repo = shared
    before = tree(repo)
    code, message = traffic_call(transport, server, "traffic", BAD_WEIGHTS[case])
    assert code == "INVALID_ARGUMENT" and "scale" in message, message
    assert tree(repo) == before
    assert {infer(server) for _ in range(4)} == {("2", 2.0)}  # no split was set


@pytest.mark.parametrize("text", ['{"2": NaN}', '{"2": Infinity}', '{"2": -Infinity}', '{"2": 1e999}', "[" * 5000, "not json"])
def test_grpc_traffic_json_that_is_not_plain_json(shared: tuple[RunningServer, Path], text: str) -> None:
    server, _ = shared
    code, message = grpc_load(server, "scale", {"action": "traffic", "traffic": text})
    assert code == "INVALID_ARGUMENT" and "traffic" in message
    assert {infer(server) for _ in range(4)} == {("2", 2.0)}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("value", [True, 7, b"{\"2\": 1}", -1, "2"], ids=["bool", "number", "bytes", "negative", "string"])
def test_traffic_parameter_must_be_json_text_over_grpc(shared: tuple[RunningServer, Path], transport: str, value: Value) -> None:
    server, _ = shared
    if transport == "grpc":
        code, message = grpc_load(server, "scale", {"action": "traffic", "traffic": value})
    else:
        code, message = http_post(server, "/v2/repository/models/scale/traffic", {"weights": http_value(value)})
    assert code == "INVALID_ARGUMENT", message


BAD_LABELS: dict[str, object] = {
    "not-object": ["stable"],
    "null": None,
    "version-string": {"stable": "2"},
    "version-bool": {"stable": True},
    "version-float": {"stable": 2.0},
    "version-negative": {"stable": -2},
    "version-huge": {"stable": 10**30},
    "version-null": {"stable": None},
    "label-empty": {"": 2},
    "label-digits": {"123": 2},
    "label-slash": {"a/b": 2},
    "label-long": {"x" * 10_000: 2},
    "label-control": {"st\nable": 2},
    "label-newline": {"stable\n": 2},
    "not-serving": {"stable": 9},
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_are_invalid_argument(shared: tuple[RunningServer, Path], transport: str, case: str) -> None:
    server, _ = shared
    code, message = traffic_call(transport, server, "labels", BAD_LABELS[case])
    assert code == "INVALID_ARGUMENT" and "scale" in message, message
    assert len(message) < 600


@pytest.mark.parametrize("ready", ["yes", 1, None, [True]], ids=["string", "number", "null", "list"])
def test_index_ready_must_be_a_boolean(shared: tuple[RunningServer, Path], ready: object) -> None:
    server, _ = shared
    code, message = http_post(server, "/v2/repository/index", {"ready": ready})
    assert code == "INVALID_ARGUMENT" and "ready" in message


SLOW_WARMUP = json.dumps({
    "max_batch_size": 8,
    "model_warmup": [{"name": f"slow{i}", "batch_size": 8, "count": 1000,
                      "inputs": {"INPUT0": {"data_type": "TYPE_FP32", "dims": [4], "zero_data": True}}} for i in range(200)],
})


def test_an_upload_whose_caller_goes_away_leaves_nothing(shared: tuple[RunningServer, Path]) -> None:
    """A gRPC deadline cancels the load mid warm-up: the staged files go, nothing enters the repository."""
    server, repo = shared
    before = tree(repo)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.RepositoryModelLoadRequest(model_name="scale")
        request.parameters["config"].string_param = SLOW_WARMUP
        request.parameters["file:3/model.onnx"].bytes_param = scale_bytes(3.0)
        with pytest.raises(grpc.RpcError) as caught:
            stub.RepositoryModelLoad(request, metadata=AUTH_GRPC, timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 30
    while tree(repo) != before and time.monotonic() < deadline:  # the server notices the cancellation
        time.sleep(0.05)
    assert tree(repo) == before
    assert infer(server) == ("2", 2.0)
    assert load("grpc", server, "scale", {"config": CONFIG}) == ("OK", "")
    assert infer(server) == ("2", 2.0) and tree(repo) == before

"""Every file a config names must resolve inside the model's directory (runtime/paths.py).

Each path field is tried against a running server with absolute paths, `..`, and symlinks inside
the model that lead outside, to files that exist and to files that do not: every one is answered
400, with the same message whatever is (or is not) at the target, the repository byte for byte as
it was, and the serving model still answering with its own labels. A file inside still works.
"""
from __future__ import annotations

import http.client
import json
import struct
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto

from runtime.errors import quoted
from runtime.examples import save_model
from tests.repository.models import build_scale
from tests.repository.snapshot import tree
from tests.serving import RunningServer, running_server

TOKEN = "paths-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "root:x:0:0:secret-line\nsecond-secret\nthird-secret\nfourth-secret\n"
LABELS = "cat\ndog\nfish\nbird\n"
SERVING = ["8.000000:0:cat", "6.000000:1:dog", "4.000000:2:fish", "2.000000:3:bird"]
TARGETS = ("absolute", "absolute-missing", "system", "system-missing", "dotdot", "dotdot-missing", "link", "link-missing")


def labelled_config(**extra: Any) -> dict[str, Any]:
    output = {"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4], "label_filename": "labels.txt"}
    return {"max_batch_size": 8, "output": [output], **extra}


def build_external(location: str) -> onnx.ModelProto:
    """The scale model with its factor stored as external data at `location`."""
    model = build_scale(1.0)
    factor = model.graph.initializer[0]
    factor.ClearField("float_data")
    for key, text in (("location", location), ("offset", "0"), ("length", "4")):
        factor.external_data.add(key=key, value=text)
    factor.data_location = TensorProto.EXTERNAL
    return model


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("paths")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (outside / "model.onnx").write_bytes(build_scale(7.0).SerializeToString())
    (outside / "sample.bin").write_bytes(np.full(4, 9.0, dtype=np.float32).tobytes())
    (outside / "weights.bin").write_bytes(struct.pack("<f", 7.0))
    repo = base / "repo"
    save_model(build_scale(2.0), repo, "scale", 1, config_pbtxt="max_batch_size: 8\n")
    (repo / "scale" / "labels.txt").write_text(LABELS)
    (repo / "scale" / "warmup").mkdir()
    save_model(build_scale(4.0), repo, "proc", 1, config_pbtxt="max_batch_size: 8\n")
    (repo / "ext" / "1").mkdir(parents=True)
    (repo / "ext" / "config.pbtxt").write_text("max_batch_size: 8\n")
    # Symlinks inside each place a name is looked up, leading outside: to a file, and to nothing.
    for folder, target in [
        (repo / "scale", "secret.txt"), (repo / "scale" / "1", "model.onnx"), (repo / "scale" / "warmup", "sample.bin"),
        (repo / "proc" / "1", "secret.txt"), (repo / "ext" / "1", "weights.bin"),
    ]:
        (folder / "link").symlink_to(outside / target)
        (folder / "link-missing").symlink_to(outside / "missing")
    return {"base": base, "outside": outside, "repo": repo}


@pytest.fixture(scope="module")
def server(layout: dict[str, Path]) -> Iterator[RunningServer]:
    with running_server(
        layout["repo"], layout["base"] / "srv",
        ["--model-control-mode", "explicit", "--load-model", "scale", "--admin-token", TOKEN],
    ) as running:
        yield running


def load(server: RunningServer, model: str, config: dict[str, Any] | None) -> tuple[int, str]:
    parameters = {} if config is None else {"config": json.dumps(config)}
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        connection.request(
            "POST", f"/v2/repository/models/{model}/load", body=json.dumps({"parameters": parameters}), headers=AUTH
        )
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    return response.status, (json.loads(raw).get("error", "") if raw else "")


def classify(server: RunningServer, model: str = "scale") -> list[str]:
    """The classification extension's strings for one request, as an unauthenticated client sees them."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([[4.0, 3.0, 2.0, 1.0]], dtype=np.float32))
        result = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput("OUTPUT0", class_count=4)])
        return [item.decode() for item in result.as_numpy("OUTPUT0").ravel()]
    finally:
        client.close()


def value(layout: dict[str, Path], target: str, outside_name: str, depth: int) -> str:
    """The name a hostile config gives for `target`; `depth`: folders between the repository and the lookup place."""
    outside = layout["outside"]
    up = "../" * (depth + 1) + "outside/"
    return {
        "absolute": str(outside / outside_name),
        "absolute-missing": str(outside / "missing"),
        "system": "/etc/passwd",
        "system-missing": "/nonexistent/passwd",
        "dotdot": up + outside_name,
        "dotdot-missing": up + "missing",
        "link": "link",
        "link-missing": "link-missing",
    }[target]


def refused_alike(
    server: RunningServer, layout: dict[str, Path], model: str, configs: Callable[[str], dict[str, Any] | None],
    values: dict[str, str], field: str, prepare: Callable[[str], None] = lambda v: None,
) -> None:
    """Each value is refused with 400 naming model and field, one message for all, nothing changed on disk."""
    shapes = set()
    for target, given in values.items():
        prepare(given)
        before = tree(layout["repo"])
        status, message = load(server, model, configs(given))
        assert status == 400, (target, message)
        assert f"model '{model}'" in message and field in message, (target, message)
        assert "secret-line" not in message and str(layout["outside"]) not in message.replace(quoted(given), ""), message
        shapes.add(message.replace(quoted(given), "<NAME>"))
        assert tree(layout["repo"]) == before, target
        assert classify(server) == SERVING
    assert len(shapes) == 1, shapes


@pytest.fixture
def labelled(server: RunningServer) -> RunningServer:
    status, message = load(server, "scale", labelled_config())
    assert status == 200, message
    return server


def test_a_label_file_inside_the_model_directory_labels_classification(labelled: RunningServer) -> None:
    assert classify(labelled) == SERVING


def test_label_filename_outside_is_refused(labelled: RunningServer, layout: dict[str, Path]) -> None:
    values = {t: value(layout, t, "secret.txt", 1) for t in TARGETS}

    def config(given: str) -> dict[str, Any]:
        return labelled_config() | {"output": [labelled_config()["output"][0] | {"label_filename": given}]}

    refused_alike(labelled, layout, "scale", config, values, "output 'OUTPUT0': label_filename")


def test_default_model_filename_outside_is_refused(labelled: RunningServer, layout: dict[str, Path]) -> None:
    values = {t: value(layout, t, "model.onnx", 2) for t in TARGETS}
    refused_alike(
        labelled, layout, "scale", lambda given: labelled_config(default_model_filename=given), values,
        "version 1: default_model_filename",
    )


def test_warm_up_input_data_file_outside_is_refused(labelled: RunningServer, layout: dict[str, Path]) -> None:
    values = {t: value(layout, t, "sample.bin", 2) for t in TARGETS}

    def config(given: str) -> dict[str, Any]:
        sample = {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": given}
        return labelled_config(model_warmup=[{"name": "w", "batch_size": 1, "inputs": {"INPUT0": sample}}])

    refused_alike(labelled, layout, "scale", config, values, "input 'INPUT0': input_data_file")


def test_a_warm_up_file_inside_is_read(labelled: RunningServer, layout: dict[str, Path]) -> None:
    (layout["repo"] / "scale" / "warmup" / "ones.bin").write_bytes(np.ones(4, dtype=np.float32).tobytes())
    sample = {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": "ones.bin"}
    status, message = load(labelled, "scale", labelled_config(model_warmup=[{"name": "w", "inputs": {"INPUT0": sample}}]))
    assert status == 200, message
    sample["dims"] = [3]  # 16 bytes on disk, 12 wanted: refused, not read in part
    status, message = load(labelled, "scale", labelled_config(model_warmup=[{"name": "w", "inputs": {"INPUT0": sample}}]))
    assert status == 400 and "holds 16 bytes" in message, message
    assert classify(labelled) == SERVING


def test_processing_labels_outside_are_refused(labelled: RunningServer, layout: dict[str, Path]) -> None:
    values = {t: value(layout, t, "secret.txt", 2) for t in TARGETS}
    spec_path = layout["repo"] / "proc" / "1" / "processing.json"

    def write_spec(given: str) -> None:
        step = {"type": "topk", "input": "OUTPUT0", "k": 2, "labels": given, "outputs": {"labels": "TOP"}}
        spec_path.write_text(json.dumps({"postprocess": [step]}))

    refused_alike(labelled, layout, "proc", lambda given: None, values, "postprocess[0] (topk): field 'labels'", write_spec)
    (layout["repo"] / "proc" / "1" / "classes.txt").write_text(LABELS)
    write_spec("classes.txt")
    status, message = load(labelled, "proc", None)
    assert status == 200, message


def test_onnx_external_data_outside_is_refused(labelled: RunningServer, layout: dict[str, Path]) -> None:
    values = {t: value(layout, t, "weights.bin", 2) for t in TARGETS}
    model_path = layout["repo"] / "ext" / "1" / "model.onnx"

    def write_model(given: str) -> None:
        model_path.write_bytes(build_external(given).SerializeToString())

    refused_alike(labelled, layout, "ext", lambda given: None, values, "initializer 'factor': external data location", write_model)
    (model_path.parent / "weights.bin").write_bytes(struct.pack("<f", 3.0))
    write_model("weights.bin")
    status, message = load(labelled, "ext", None)
    assert status == 200, message
    client = httpclient.InferenceServerClient(labelled.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        assert float(client.infer("ext", [tensor]).as_numpy("OUTPUT0")[0, 0]) == 3.0
    finally:
        client.close()

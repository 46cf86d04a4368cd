"""Pre- and post-processing end to end: a real server, tritonclient over HTTP and gRPC, real encoded images
(made with Pillow) and tabular rows; the served outputs are compared with the same steps done by hand in
numpy (tests/processing/reference.py) followed by onnxruntime on the model file.

Tolerances: probabilities and scores within atol 1e-4 of the hand pipeline (the FP32 pre-processing
differs from float64 by < 1e-4 per pixel, which the small CNN does not amplify past that); labels exact.
"""
from __future__ import annotations

import base64
import http.client
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tests.processing import reference as ref
from tests.serving import RunningServer, running_server
from tritonclient.utils import InferenceServerException

from runtime.examples import (
    IMAGE_CLASSIFIER_LABELS,
    TABULAR_VOCABULARY,
    build_mlp,
    save_model,
    write_example_repository,
)

Array = Any
ATOL = 1e-4
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]

HWC_SPEC = {
    "preprocess": [
        {"type": "image", "input": "PIXELS_HWC", "model_input": "PIXELS", "format": "hwc",
         "input_channel_order": "BGR", "resize": [40, 40], "scale": 1 / 255, "mean": MEAN, "std": STD}
    ],
    "postprocess": [{"type": "softmax", "input": "LOGITS"}],
}
LABELED_MLP_CONFIG = """
name: "labeled_mlp"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_example_repository(tmp_path_factory.mktemp("processing-repo"))
    # the image classifier again, fed raw BGR pixels of any size: format "hwc"
    hwc = root / "image_hwc"
    shutil.copytree(root / "image_classifier", hwc)
    (hwc / "config.pbtxt").write_text((hwc / "config.pbtxt").read_text().replace("image_classifier", "image_hwc"))
    (hwc / "1" / "processing.json").write_text(json.dumps(HWC_SPEC))
    # a model without processing whose output has a Triton label file, for the classification extension
    save_model(build_mlp(), root, "labeled_mlp", config_pbtxt=LABELED_MLP_CONFIG)
    (root / "labeled_mlp" / "labels.txt").write_text("north\neast\nsouth\nwest\n")
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(repository, tmp_path_factory.mktemp("processing-server")) as running:
        yield running


@pytest.fixture(scope="module")
def http_client(server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url, concurrency=8)


@pytest.fixture(scope="module")
def grpc_client(server: RunningServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.fixture(scope="module")
def sessions(repository: Path) -> dict[str, ort.InferenceSession]:
    return {
        name: ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        for name in ("image_classifier", "tabular_classifier", "labeled_mlp")
    }


def raw_post(server: RunningServer, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """What curl does: a JSON body, no binary extension."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


# ---- the image classifier, by hand -------------------------------------------------------------------------


def images() -> list[bytes]:
    return [
        ref.encode(ref.picture(48, 64, seed=21), "JPEG", quality=92),
        ref.encode(ref.picture(36, 36, seed=22), "PNG"),
        ref.encode(ref.picture(90, 41, seed=23), "PNG"),
    ]


def image_by_hand(data: bytes) -> Array:
    pixels = ref.decode(data)
    resized = ref.shorter_side_size(pixels.shape[0], pixels.shape[1], 36)
    return ref.normalise(ref.resize_crop(pixels, resized, (32, 32)), 1 / 255, MEAN, STD)


def classifier_by_hand(session: ort.InferenceSession, batch: Array) -> tuple[Array, Array, Array]:
    logits = session.run(None, {"PIXELS": batch.astype(np.float32)})[0]
    probabilities = ref.softmax(logits)
    scores, indices = ref.topk(probabilities, 3)
    return probabilities, scores, indices


def check_classifier_outputs(probabilities: Array, labels: Array, scores: Array, expected: tuple[Array, Array, Array]) -> None:
    want_probabilities, want_scores, want_indices = expected
    np.testing.assert_allclose(probabilities, want_probabilities, atol=ATOL)
    np.testing.assert_allclose(scores, want_scores, atol=ATOL)
    assert labels.shape == want_indices.shape
    for row in range(labels.shape[0]):
        # each served label's class has the served score (robust to near-ties within ATOL)
        for column, label in enumerate(labels[row]):
            index = IMAGE_CLASSIFIER_LABELS.index(label.decode())
            assert want_probabilities[row, index] == pytest.approx(float(scores[row, column]), abs=ATOL)


def bytes_column(items: list[bytes]) -> Array:
    array = np.empty((len(items), 1), dtype=object)
    array[:, 0] = items
    return array


def test_metadata_and_config_show_the_public_tensors(
    http_client: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    metadata = http_client.get_model_metadata("image_classifier")
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("IMAGE", "BYTES", [-1, 1])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("PROBABILITIES", "FP32", [-1, 10]), ("LABELS", "BYTES", [-1, 3]), ("SCORES", "FP32", [-1, 3]),
    ]
    config = http_client.get_model_config("tabular_classifier")
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("NUMERIC", "TYPE_FP32", [4]), ("CATEGORIES", "TYPE_STRING", [2]),
    ]
    assert [t["name"] for t in config["output"]] == ["PROBABILITY", "LABEL", "CLASS_ID"]
    grpc_config = grpc_client.get_model_config("image_classifier").config
    assert [(t.name, list(t.dims)) for t in grpc_config.input] == [("IMAGE", [1])]
    grpc_metadata = grpc_client.get_model_metadata("image_hwc")
    assert [(t.name, t.datatype, list(t.shape)) for t in grpc_metadata.inputs] == [("PIXELS_HWC", "UINT8", [-1, -1, -1, 3])]


def test_image_classifier_over_http_matches_numpy_and_onnxruntime(
    http_client: httpclient.InferenceServerClient, sessions: dict[str, ort.InferenceSession]
) -> None:
    data = images()
    image = httpclient.InferInput("IMAGE", [3, 1], "BYTES")
    image.set_data_from_numpy(bytes_column(data))
    outputs = [
        httpclient.InferRequestedOutput("PROBABILITIES"),
        httpclient.InferRequestedOutput("LABELS"),
        httpclient.InferRequestedOutput("SCORES", binary_data=False),
    ]
    result = http_client.infer("image_classifier", [image], outputs=outputs)
    expected = classifier_by_hand(sessions["image_classifier"], np.stack([image_by_hand(d) for d in data]))
    check_classifier_outputs(result.as_numpy("PROBABILITIES"), result.as_numpy("LABELS"), result.as_numpy("SCORES"), expected)


def test_image_classifier_over_grpc_with_the_classification_extension(
    grpc_client: grpcclient.InferenceServerClient, sessions: dict[str, ort.InferenceSession]
) -> None:
    data = images()[::-1]
    image = grpcclient.InferInput("IMAGE", [3, 1], "BYTES")
    image.set_data_from_numpy(bytes_column(data))
    outputs = [
        grpcclient.InferRequestedOutput("PROBABILITIES", class_count=2),
        grpcclient.InferRequestedOutput("LABELS"),
        grpcclient.InferRequestedOutput("SCORES"),
    ]
    result = grpc_client.infer("image_classifier", [image], outputs=outputs)
    probabilities, scores, indices = classifier_by_hand(sessions["image_classifier"], np.stack([image_by_hand(d) for d in data]))
    classes = result.as_numpy("PROBABILITIES")
    assert classes.shape == (3, 2)
    for row in range(3):
        for column in range(2):
            score, index, label = classes[row, column].decode().split(":")
            assert label == IMAGE_CLASSIFIER_LABELS[int(index)]
            assert float(score) == pytest.approx(probabilities[row, int(index)], abs=ATOL)
            assert float(score) == pytest.approx(scores[row, column], abs=ATOL)
    assert result.as_numpy("LABELS")[:, 0].tolist() == [IMAGE_CLASSIFIER_LABELS[i].encode() for i in indices[:, 0]]


def test_curl_style_json_with_base64_images(server: RunningServer, sessions: dict[str, ort.InferenceSession]) -> None:
    data = images()[1]
    body = {
        "inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}],
        "outputs": [{"name": "LABELS"}, {"name": "PROBABILITIES", "parameters": {"classification": 3}}],
    }
    status, reply = raw_post(server, "/v2/models/image_classifier/infer", body)
    assert status == 200, reply
    probabilities, _, indices = classifier_by_hand(sessions["image_classifier"], image_by_hand(data)[None])
    by_name = {output["name"]: output for output in reply["outputs"]}
    assert by_name["LABELS"]["data"] == [IMAGE_CLASSIFIER_LABELS[i] for i in indices[0]]
    assert by_name["PROBABILITIES"]["datatype"] == "BYTES" and by_name["PROBABILITIES"]["shape"] == [1, 3]
    first = by_name["PROBABILITIES"]["data"][0].split(":")
    assert float(first[0]) == pytest.approx(probabilities[0].max(), abs=ATOL) and first[2] == by_name["LABELS"]["data"][0]


def test_hwc_pixels_of_any_size_over_grpc(
    grpc_client: grpcclient.InferenceServerClient, sessions: dict[str, ort.InferenceSession]
) -> None:
    rgb = np.stack([ref.picture(50, 45, seed=s) for s in (31, 32)])
    pixels = grpcclient.InferInput("PIXELS_HWC", list(rgb.shape), "UINT8")
    pixels.set_data_from_numpy(np.ascontiguousarray(rgb[..., ::-1]))  # the spec says the client sends BGR
    result = grpc_client.infer("image_hwc", [pixels])
    batch = np.stack([ref.normalise(ref.resize_crop(image, (40, 40), (32, 32)), 1 / 255, MEAN, STD) for image in rgb])
    logits = sessions["image_classifier"].run(None, {"PIXELS": batch.astype(np.float32)})[0]
    np.testing.assert_allclose(result.as_numpy("LOGITS"), ref.softmax(logits), atol=ATOL)


# ---- the tabular classifier, by hand ---------------------------------------------------------------------------

NUMERIC = np.array(
    [[34.0, 52000.0, 12.0, 79.5], [np.nan, 250000.0, np.nan, 20.0], [71.0, -10.0, 60.0, 110.0]], dtype=np.float32
)
CATEGORIES = [["us", "pro"], ["de", "free"], ["jp", "team"]]


def tabular_by_hand(session: ort.InferenceSession, numeric: Array, categories: list[list[str]]) -> tuple[Array, Array]:
    features = np.hstack([
        ref.numeric_column(numeric[:, 0], fill=45.0, clip=(18, 100), standardize=(45.0, 15.0))[:, None],
        ref.numeric_column(numeric[:, 1], clip=(0, None), minmax=(0.0, 200000.0))[:, None],
        ref.numeric_column(numeric[:, 2], fill=0.0, standardize=(24.0, 18.0))[:, None],
        ref.numeric_column(numeric[:, 3], standardize=(60.0, 30.0))[:, None],
        ref.onehot([row[0] for row in categories], TABULAR_VOCABULARY["country"]),
        ref.onehot([row[1] for row in categories], TABULAR_VOCABULARY["plan"]),
    ])
    probability = session.run(None, {"FEATURES": features.astype(np.float32)})[0]
    labels = np.where(probability >= 0.5, b"churns", b"stays")
    return probability, labels


def test_tabular_classifier_over_http_json_like_curl(server: RunningServer, sessions: dict[str, ort.InferenceSession]) -> None:
    numeric = NUMERIC[[0, 2]]
    categories = [CATEGORIES[0], CATEGORIES[2]]
    body = {
        "inputs": [
            {"name": "NUMERIC", "shape": [2, 4], "datatype": "FP32", "data": numeric.tolist()},
            {"name": "CATEGORIES", "shape": [2, 2], "datatype": "BYTES", "data": categories},
        ]
    }
    status, reply = raw_post(server, "/v2/models/tabular_classifier/infer", body)
    assert status == 200, reply
    probability, labels = tabular_by_hand(sessions["tabular_classifier"], numeric, categories)
    by_name = {output["name"]: output for output in reply["outputs"]}
    np.testing.assert_allclose(np.array(by_name["PROBABILITY"]["data"]).reshape(2, 1), probability, atol=1e-5)
    assert by_name["LABEL"]["data"] == [label.decode() for label in labels[:, 0]]
    assert by_name["CLASS_ID"]["data"] == [int(p >= 0.5) for p in probability[:, 0]]


def test_tabular_classifier_over_grpc_with_missing_values(
    grpc_client: grpcclient.InferenceServerClient, sessions: dict[str, ort.InferenceSession]
) -> None:
    numeric = grpcclient.InferInput("NUMERIC", [3, 4], "FP32")
    numeric.set_data_from_numpy(NUMERIC)
    categories = grpcclient.InferInput("CATEGORIES", [3, 2], "BYTES")
    categories.set_data_from_numpy(np.array(CATEGORIES, dtype=object))
    result = grpc_client.infer("tabular_classifier", [numeric, categories])
    probability, labels = tabular_by_hand(sessions["tabular_classifier"], NUMERIC, CATEGORIES)
    np.testing.assert_allclose(result.as_numpy("PROBABILITY"), probability, atol=1e-5)
    assert result.as_numpy("LABEL").tolist() == labels.tolist()


# ---- bad input: 400 / INVALID_ARGUMENT naming input, row and problem; the rest of the batch is unaffected ----


def test_bad_images_fail_alone_while_good_ones_batch(
    http_client: httpclient.InferenceServerClient, sessions: dict[str, ort.InferenceSession]
) -> None:
    good = images()
    jpeg = good[0]
    rgba = ref.encode(np.dstack([ref.picture(20, 20, seed=41), np.full((20, 20), 255, np.uint8)]), "PNG")
    bad = {
        "truncated": (jpeg[: len(jpeg) // 3], "row 1: corrupt or truncated"),
        "garbage": (b"\x00\x01 not an image", "row 1: not a decodable JPEG/PNG image"),
        "channels": (rgba, "row 1: image has 4 channels (mode RGBA), the model expects 3"),
    }
    expected = classifier_by_hand(sessions["image_classifier"], np.stack([image_by_hand(d) for d in good]))
    handles = []
    for round_ in range(2):
        for name, (data, _) in bad.items():
            request = httpclient.InferInput("IMAGE", [2, 1], "BYTES")
            request.set_data_from_numpy(bytes_column([good[round_], data]))
            handles.append((name, http_client.async_infer("image_classifier", [request])))
            request = httpclient.InferInput("IMAGE", [3, 1], "BYTES")
            request.set_data_from_numpy(bytes_column(good))
            handles.append(("good", http_client.async_infer("image_classifier", [request])))
    for name, handle in handles:
        if name == "good":
            result = handle.get_result()
            check_classifier_outputs(result.as_numpy("PROBABILITIES"), result.as_numpy("LABELS"), result.as_numpy("SCORES"), expected)
            continue
        with pytest.raises(InferenceServerException) as caught:
            handle.get_result()
        assert str(caught.value.status()) == "400"
        message = caught.value.message()
        assert "model 'image_classifier' version 1: input 'IMAGE' " + bad[name][1] in message, message


def expect_grpc_invalid(call: Any, *fragments: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value.status()
    for fragment in fragments:
        assert fragment in caught.value.message(), caught.value.message()


def tabular_inputs(numeric: Array, categories: list[list[str]]) -> list[grpcclient.InferInput]:
    first = grpcclient.InferInput("NUMERIC", list(numeric.shape), "FP32")
    first.set_data_from_numpy(numeric.astype(np.float32))
    second = grpcclient.InferInput("CATEGORIES", [len(categories), len(categories[0])], "BYTES")
    second.set_data_from_numpy(np.array(categories, dtype=object))
    return [first, second]


def test_bad_tabular_rows_are_invalid_argument_over_grpc(grpc_client: grpcclient.InferenceServerClient) -> None:
    with_nan = NUMERIC[:2].copy()
    with_nan[1, 1] = np.nan  # income: "missing": "error"
    expect_grpc_invalid(
        lambda: grpc_client.infer("tabular_classifier", tabular_inputs(with_nan, CATEGORIES[:2])),
        "input 'NUMERIC' row 1 column 1 ('income'): missing value (NaN)",
    )
    expect_grpc_invalid(
        lambda: grpc_client.infer("tabular_classifier", tabular_inputs(NUMERIC[:2], [["us", "pro"], ["us", "gold"]])),
        "input 'CATEGORIES' row 1 column 1 ('plan'): unknown category 'gold'",
    )
    expect_grpc_invalid(
        lambda: grpc_client.infer("tabular_classifier", tabular_inputs(NUMERIC[:2, :3], CATEGORIES[:2])),
        "input 'NUMERIC' has shape [2, 3], but the model expects [-1, 4]",
    )
    bad_image = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    bad_image.set_data_from_numpy(bytes_column([b"GIF89a nope"]))
    expect_grpc_invalid(lambda: grpc_client.infer("image_classifier", [bad_image]), "input 'IMAGE' row 0: not a decodable")
    # the server still answers good requests
    result = grpc_client.infer("tabular_classifier", tabular_inputs(NUMERIC[:1], CATEGORIES[:1]))
    assert result.as_numpy("LABEL").shape == (1, 1)


def test_bad_tabular_rows_are_400_over_http(server: RunningServer) -> None:
    body = {
        "inputs": [
            {"name": "NUMERIC", "shape": [1, 4], "datatype": "FP32", "data": [30, 1000, 3, 50]},
            {"name": "CATEGORIES", "shape": [1, 2], "datatype": "BYTES", "data": ["atlantis", "pro"]},
        ]
    }
    status, reply = raw_post(server, "/v2/models/tabular_classifier/infer", body)
    assert status == 400
    assert "input 'CATEGORIES' row 0 column 0 ('country'): unknown category 'atlantis'" in reply["error"]


# ---- the classification extension on a model without processing --------------------------------------------


def test_classification_with_a_triton_label_file(
    http_client: httpclient.InferenceServerClient,
    grpc_client: grpcclient.InferenceServerClient,
    sessions: dict[str, ort.InferenceSession],
) -> None:
    x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
    expected = sessions["labeled_mlp"].run(None, {"INPUT": x})[0]
    names = ["north", "east", "south", "west"]
    http_input = httpclient.InferInput("INPUT", [2, 16], "FP32")
    http_input.set_data_from_numpy(x)
    grpc_input = grpcclient.InferInput("INPUT", [2, 16], "FP32")
    grpc_input.set_data_from_numpy(x)
    results = [
        http_client.infer("labeled_mlp", [http_input], outputs=[httpclient.InferRequestedOutput("PROBABILITIES", class_count=2)]),
        grpc_client.infer("labeled_mlp", [grpc_input], outputs=[grpcclient.InferRequestedOutput("PROBABILITIES", class_count=2)]),
    ]
    for result in results:
        classes = result.as_numpy("PROBABILITIES")
        assert classes.shape == (2, 2)
        for row in range(2):
            order = np.argsort(-expected[row], kind="stable")[:2]
            for column, index in enumerate(order):
                score, served_index, label = classes[row, column].decode().split(":")
                assert (int(served_index), label) == (int(index), names[index])
                assert float(score) == pytest.approx(expected[row, index], abs=1e-6)

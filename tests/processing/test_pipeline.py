"""Pre- and post-processing of whole requests, in process, against the same steps done by hand in numpy
(tests/processing/reference.py), on real encoded images made with Pillow.

Tolerances: FP32 model inputs within rtol 1e-5 / atol 1e-4 of the float64 hand computation; UINT8 within 1
(rounding at .5); FP16 within FP16 resolution (rtol 2e-3, atol 2e-3). Post-processing outputs within 1e-6.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.processing import reference as ref
from runtime.errors import InvalidInput
from runtime.processing import Pipeline, load_processing
from runtime.repository.model_config import parse_config_text, version_spec

LABEL = "model 'toy' version 1"
MEAN, STD, SCALE = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1 / 255


def make(tmp_path: Path, config: str, spec: dict[str, Any], files: dict[str, str] | None = None) -> Pipeline:
    version_dir = tmp_path / "toy" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (version_dir / name).write_text(text)
    (version_dir / "processing.json").write_text(json.dumps(spec))
    processing = load_processing(tmp_path / "toy", version_dir, version_spec(parse_config_text(config, "config.pbtxt")))
    assert isinstance(processing, Pipeline)
    return processing


def image_config(datatype: str = "FP32", dims: str = "3, 16, 16", max_batch_size: int = 8) -> str:
    return f"""
name: "toy"
max_batch_size: {max_batch_size}
input [ {{ name: "PIXELS" data_type: TYPE_{datatype} dims: [ {dims} ] }} ]
output [ {{ name: "LOGITS" data_type: TYPE_FP32 dims: [ 4 ] }} ]
"""


def image_spec(**fields: Any) -> dict[str, Any]:
    step = {"type": "image", "input": "IMAGE", "model_input": "PIXELS", **fields}
    return {"preprocess": [step]}


def column(*items: bytes) -> Any:
    array = np.empty((len(items), 1), dtype=object)
    array[:, 0] = list(items)
    return array


# ---- images ---------------------------------------------------------------------------------------------


def test_encoded_png_and_jpeg_of_different_sizes_match_the_hand_steps(tmp_path: Path) -> None:
    processing = make(
        tmp_path, image_config(),
        image_spec(resize={"shorter_side": 20}, scale=SCALE, mean=MEAN, std=STD),
    )
    assert [(t.name, t.datatype, t.shape) for t in processing.public_inputs] == [("IMAGE", "BYTES", (-1, 1))]
    images = [ref.encode(ref.picture(40, 30, seed=1), "PNG"), ref.encode(ref.picture(21, 57, seed=2), "JPEG", quality=90)]
    out = processing.preprocess(LABEL, {"IMAGE": column(*images)})["PIXELS"]
    assert out.shape == (2, 3, 16, 16) and out.dtype == np.float32
    for row, data in enumerate(images):
        pixels = ref.decode(data)
        resized = ref.shorter_side_size(pixels.shape[0], pixels.shape[1], 20)
        expected = ref.normalise(ref.resize_crop(pixels, resized, (16, 16)), SCALE, MEAN, STD)
        np.testing.assert_allclose(out[row], expected, rtol=1e-5, atol=1e-4)


def test_hwc_bgr_pixels_into_an_nhwc_uint8_model_input(tmp_path: Path) -> None:
    processing = make(
        tmp_path, image_config("UINT8", "8, 8, 3"),
        image_spec(format="hwc", input_channel_order="BGR", layout="NHWC", resize=[10, 12]),
    )
    assert [(t.name, t.datatype, t.shape) for t in processing.public_inputs] == [("IMAGE", "UINT8", (-1, -1, -1, 3))]
    rgb = np.stack([ref.picture(13, 17, seed=s) for s in (3, 4, 5)])
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    out = processing.preprocess(LABEL, {"IMAGE": bgr})["PIXELS"]
    assert out.shape == (3, 8, 8, 3) and out.dtype == np.uint8
    for row in range(3):
        expected = np.clip(np.rint(ref.resize_crop(rgb[row], (10, 12), (8, 8))), 0, 255)
        assert np.abs(out[row].astype(int) - expected.astype(int)).max() <= 1


def test_grayscale_into_an_fp16_input_and_bgr_order(tmp_path: Path) -> None:
    gray = make(tmp_path / "a", image_config("FP16", "1, 12, 12"), image_spec(scale=SCALE, mean=[0.5], std=[0.25]))
    data = ref.encode(ref.picture(30, 20, seed=6, channels=1), "PNG")
    out = gray.preprocess(LABEL, {"IMAGE": column(data)})["PIXELS"]
    assert out.dtype == np.float16 and out.shape == (1, 1, 12, 12)
    expected = ref.normalise(ref.resize_crop(ref.decode(data, "L"), (12, 12), (12, 12)), SCALE, [0.5], [0.25])
    np.testing.assert_allclose(out[0].astype(np.float64), expected, rtol=2e-3, atol=2e-3)

    bgr = make(tmp_path / "b", image_config(), image_spec(channel_order="BGR", scale=SCALE, mean=MEAN, std=STD))
    data = ref.encode(ref.picture(16, 16, seed=7), "PNG")
    out = bgr.preprocess(LABEL, {"IMAGE": column(data)})["PIXELS"]
    expected = ref.normalise(ref.decode(data).astype(np.float64), SCALE, MEAN, STD, bgr=True)  # mean/std in model order
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-4)


def test_convert_accepts_rgba_palette_and_grayscale_images(tmp_path: Path) -> None:
    processing = make(tmp_path, image_config(), image_spec(convert=True))
    rgba = np.dstack([ref.picture(16, 16, seed=8), np.full((16, 16), 200, np.uint8)])
    images = [ref.encode(rgba, "PNG"), ref.encode(ref.picture(16, 16, seed=9, channels=1), "JPEG")]
    out = processing.preprocess(LABEL, {"IMAGE": column(*images)})["PIXELS"]
    for row, data in enumerate(images):
        np.testing.assert_allclose(out[row], ref.decode(data, "RGB").transpose(2, 0, 1), atol=1e-4)


def test_base64_text_is_accepted_when_enabled(tmp_path: Path) -> None:
    data = ref.encode(ref.picture(16, 16, seed=10), "PNG")
    text = base64.b64encode(data)
    accepting = make(tmp_path / "a", image_config(), image_spec(base64=True))
    out = accepting.preprocess(LABEL, {"IMAGE": column(text, data)})["PIXELS"]
    np.testing.assert_array_equal(out[0], out[1])
    strict = make(tmp_path / "b", image_config(), image_spec())
    with pytest.raises(InvalidInput, match=r"input 'IMAGE' row 0: not a decodable JPEG/PNG image"):
        strict.preprocess(LABEL, {"IMAGE": column(text)})


def bad_images() -> list[Any]:
    good = ref.encode(ref.picture(16, 16, seed=11), "JPEG")
    rgba = ref.encode(np.dstack([ref.picture(16, 16, seed=12), np.zeros((16, 16), np.uint8)]), "PNG")
    gray = ref.encode(ref.picture(16, 16, seed=13, channels=1), "PNG")
    gif = ref.encode(ref.picture(16, 16, seed=14), "GIF")
    big = ref.encode(np.zeros((100, 120, 3), np.uint8), "PNG")
    return [
        pytest.param(b"definitely not an image", r"row 1: not a decodable JPEG/PNG image", id="garbage"),
        pytest.param(good[: len(good) // 2], r"row 1: corrupt or truncated (JPEG )?image", id="truncated-jpeg"),
        pytest.param(rgba, r"row 1: image has 4 channels \(mode RGBA\), the model expects 3", id="rgba"),
        pytest.param(gray, r"row 1: image has 1 channel \(mode L\), the model expects 3", id="grayscale"),
        pytest.param(gif, r"row 1: not a decodable JPEG/PNG image", id="format-not-allowed"),
        pytest.param(big, r"row 1: image of 120x100 pixels is over the 10000-pixel limit", id="too-many-pixels"),
        pytest.param(b"", r"row 1: not a decodable", id="empty"),
    ]


@pytest.mark.parametrize(("data", "message"), bad_images())
def test_bad_images_name_the_input_row_and_problem(tmp_path: Path, data: bytes, message: str) -> None:
    processing = make(tmp_path, image_config(), image_spec(max_pixels=10_000))
    good = ref.encode(ref.picture(16, 16, seed=15), "PNG")
    with pytest.raises(InvalidInput, match=f"^{LABEL}: input 'IMAGE' {message}"):
        processing.preprocess(LABEL, {"IMAGE": column(good, data)})


def test_an_unbatched_model_takes_its_fixed_image_count(tmp_path: Path) -> None:
    processing = make(tmp_path, image_config(dims="2, 3, 8, 8", max_batch_size=0), image_spec())
    assert [(t.name, t.shape) for t in processing.public_inputs] == [("IMAGE", (2, 1))]
    images = [ref.encode(ref.picture(8, 8, seed=s), "PNG") for s in (16, 17)]
    out = processing.preprocess(LABEL, {"IMAGE": column(*images)})["PIXELS"]
    assert out.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(out[1], ref.decode(images[1]).transpose(2, 0, 1), atol=1e-4)


# ---- tabular --------------------------------------------------------------------------------------------

TABULAR_CONFIG = """
name: "toy"
max_batch_size: 16
input [
  { name: "FEATURES" data_type: TYPE_FP32 dims: [ 10 ] },
  { name: "CODES" data_type: TYPE_INT64 dims: [ 2 ] }
]
output [ { name: "PROBABILITY" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
VOCABULARY = {"country": ["de", "fr", "us"], "plan": ["free", "pro"], "device": ["ios", "android", "web"]}
TABULAR_SPEC = {
    "preprocess": [
        {"type": "numeric", "input": "NUMERIC", "model_input": "FEATURES", "defaults": {"missing": "error"},
         "columns": [
             {"name": "age", "fill": 40, "clip": [18, 90], "standardize": {"mean": 40, "std": 10}},
             {"name": "income", "clip": [0, None], "minmax": {"min": 0, "max": 1000}},
             {"name": "visits", "missing": "keep"},
         ]},
        {"type": "categorical", "input": "CATEGORIES", "model_input": "FEATURES", "vocabulary": "vocabulary.json",
         "columns": ["country", "plan"], "encoding": "onehot", "unknown": "oov"},
        {"type": "categorical", "input": "IDS", "model_input": "CODES", "vocabulary": "vocabulary.json",
         "columns": ["device", "country"], "encoding": "index", "unknown": "error"},
    ],
}


def strings(rows: list[list[str]]) -> Any:
    array = np.empty((len(rows), len(rows[0])), dtype=object)
    array[:] = [[value.encode() for value in row] for row in rows]
    return array


def tabular(tmp_path: Path) -> Pipeline:
    return make(tmp_path, TABULAR_CONFIG, TABULAR_SPEC, {"vocabulary.json": json.dumps(VOCABULARY)})


def test_numeric_and_categorical_columns_match_the_hand_steps(tmp_path: Path) -> None:
    processing = tabular(tmp_path)
    assert [(t.name, t.datatype, t.shape) for t in processing.public_inputs] == [
        ("NUMERIC", "FP32", (-1, 3)), ("CATEGORIES", "BYTES", (-1, 2)), ("IDS", "BYTES", (-1, 2)),
    ]
    numeric = np.array([[np.nan, 1500.0, np.nan], [12.0, -5.0, 3.0], [55.5, 250.0, 1.0]], dtype=np.float32)
    categories = strings([["us", "pro"], ["mars", "free"], ["de", "gold"]])
    ids = strings([["web", "fr"], ["ios", "us"], ["android", "de"]])
    out = processing.preprocess(LABEL, {"NUMERIC": numeric, "CATEGORIES": categories, "IDS": ids})
    expected = np.hstack([
        ref.numeric_column(numeric[:, 0], fill=40, clip=(18, 90), standardize=(40, 10))[:, None],
        ref.numeric_column(numeric[:, 1], clip=(0, None), minmax=(0, 1000))[:, None],
        numeric[:, 2:3].astype(np.float64),
        ref.onehot(list(categories[:, 0]), VOCABULARY["country"], oov=True),
        ref.onehot(list(categories[:, 1]), VOCABULARY["plan"], oov=True),
    ])
    assert out["FEATURES"].shape == (3, 10) and out["FEATURES"].dtype == np.float32
    np.testing.assert_allclose(out["FEATURES"], expected, rtol=1e-6, atol=1e-7)
    assert out["CODES"].tolist() == [[2, 1], [0, 2], [1, 0]]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"NUMERIC": [30, np.nan, 1]}, r"input 'NUMERIC' row 1 column 1 \('income'\): missing value \(NaN\), and the column's policy is 'error'"),
        ({"IDS": ["tv", "us"]}, r"input 'IDS' row 1 column 0 \('device'\): unknown category 'tv', and the step's policy is 'error'"),
        ({"IDS": ["web", "atlantis"]}, r"input 'IDS' row 1 column 1 \('country'\): unknown category 'atlantis'"),
    ],
)
def test_bad_rows_name_the_input_row_column_and_problem(tmp_path: Path, row: dict[str, list[Any]], message: str) -> None:
    processing = tabular(tmp_path)
    inputs = {
        "NUMERIC": np.array([[30, 10, 1], row.get("NUMERIC", [30, 10, 1])], dtype=np.float32),
        "CATEGORIES": strings([["us", "pro"], ["us", "pro"]]),
        "IDS": strings([["web", "fr"], row.get("IDS", ["web", "fr"])]),
    }
    with pytest.raises(InvalidInput, match=f"^{LABEL}: {message}"):
        processing.preprocess(LABEL, inputs)


def test_unbatched_inputs_must_agree_on_rows(tmp_path: Path) -> None:
    config = TABULAR_CONFIG.replace("max_batch_size: 16", "max_batch_size: 0").replace("dims: [ 10 ]", "dims: [ -1, 10 ]")
    config = config.replace("dims: [ 2 ]", "dims: [ -1, 2 ]").replace("dims: [ 1 ]", "dims: [ -1, 1 ]")
    processing = make(tmp_path, config, TABULAR_SPEC, {"vocabulary.json": json.dumps(VOCABULARY)})
    inputs = {
        "NUMERIC": np.ones((2, 3), dtype=np.float32),
        "CATEGORIES": strings([["us", "pro"]] * 3),
        "IDS": strings([["web", "fr"]] * 3),
    }
    with pytest.raises(InvalidInput, match=r"inputs disagree on the row count \(2 in 'NUMERIC', 3 in 'CATEGORIES'\)"):
        processing.preprocess(LABEL, inputs)


# ---- post-processing --------------------------------------------------------------------------------------

POST_CONFIG = """
name: "toy"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [
  { name: "LOGITS" data_type: TYPE_FP16 dims: [ 5 ] },
  { name: "SCORE" data_type: TYPE_FP32 dims: [ 2 ] }
]
"""
POST_SPEC = {
    "postprocess": [
        {"type": "softmax", "input": "LOGITS", "output": "PROBABILITIES"},
        {"type": "topk", "input": "PROBABILITIES", "k": 3, "labels": "labels.txt",
         "outputs": {"scores": "TOP_SCORES", "indices": "TOP_IDS", "labels": "TOP_LABELS"}},
        {"type": "threshold", "input": "SCORE", "threshold": 0.3, "labels": ["no", "yes"],
         "outputs": {"index": "DECISION_ID", "label": "DECISION"}},
    ],
    "outputs": ["PROBABILITIES", "TOP_LABELS", "TOP_SCORES", "TOP_IDS", "DECISION", "DECISION_ID"],
}
CLASSES = ["ant", "bee", "cat", "dog", "eel"]


def test_softmax_topk_and_threshold_match_the_hand_steps(tmp_path: Path) -> None:
    processing = make(tmp_path, POST_CONFIG, POST_SPEC, {"labels.txt": "\n".join(CLASSES) + "\n"})
    assert [(t.name, t.datatype, t.shape) for t in processing.public_outputs] == [
        ("PROBABILITIES", "FP16", (-1, 5)), ("TOP_LABELS", "BYTES", (-1, 3)), ("TOP_SCORES", "FP16", (-1, 3)),
        ("TOP_IDS", "INT64", (-1, 3)), ("DECISION", "BYTES", (-1, 1)), ("DECISION_ID", "INT64", (-1, 1)),
    ]
    logits = np.array([[0.5, 2.0, -1.0, 2.0, 0.0], [3.0, 1.0, 0.0, -2.0, 1.5]], dtype=np.float16)
    score = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)  # (negative, positive)
    out = processing.postprocess(LABEL, {"LOGITS": logits, "SCORE": score})
    assert list(out) == POST_SPEC["outputs"]
    probabilities = ref.softmax(logits.astype(np.float32))
    assert out["PROBABILITIES"].dtype == np.float16
    np.testing.assert_allclose(out["PROBABILITIES"].astype(np.float64), probabilities, rtol=1e-3)
    values, indices = ref.topk(out["PROBABILITIES"].astype(np.float32), 3)
    assert out["TOP_IDS"].tolist() == indices.tolist() == [[1, 3, 0], [0, 4, 1]]  # the tie keeps index order
    np.testing.assert_allclose(out["TOP_SCORES"].astype(np.float32), values, rtol=1e-6)
    assert out["TOP_LABELS"].tolist() == [[b"bee", b"dog", b"ant"], [b"ant", b"eel", b"bee"]]
    assert out["DECISION"].tolist() == [[b"no"], [b"yes"]]
    assert out["DECISION_ID"].tolist() == [[0], [1]]
    assert processing.predicted_labels(out) == ["bee", "ant"]
    assert processing.prediction_output == "TOP_LABELS"
    assert processing.output_labels("PROBABILITIES") == tuple(CLASSES)
    assert processing.output_labels("SCORE") is None  # not public
    assert processing.model_output_labels() == {"LOGITS": tuple(CLASSES), "SCORE": ("no", "yes")}

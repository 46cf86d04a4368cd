"""processing.json is checked at load time; a bad spec is a ModelLoadError naming the file, step and field."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import ModelLoadError
from runtime.processing import Pipeline, load_processing
from runtime.processing.spec import SPEC_FILENAME
from runtime.repository.model_config import parse_config_text, public_config_message, version_spec

CONFIG = """
name: "toy"
max_batch_size: 8
input [
  { name: "PIXELS" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] },
  { name: "FEATURES" data_type: TYPE_FP32 dims: [ 7 ] },
  { name: "EXTRA" data_type: TYPE_INT64 dims: [ 2 ] }
]
output [
  { name: "LOGITS" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "SCORE" data_type: TYPE_FP32 dims: [ 1 ] }
]
"""

GOOD: dict[str, Any] = {
    "preprocess": [
        {"type": "image", "input": "IMAGE", "model_input": "PIXELS", "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
        {"type": "numeric", "input": "NUMERIC", "model_input": "FEATURES", "columns": ["a", "b", {"name": "c", "fill": 0}]},
        {"type": "categorical", "input": "CATEGORIES", "model_input": "FEATURES", "vocabulary": "vocabulary.json",
         "columns": ["color"], "encoding": "onehot", "unknown": "oov"},
    ],
    "postprocess": [
        {"type": "softmax", "input": "LOGITS", "output": "PROBABILITIES"},
        {"type": "topk", "input": "PROBABILITIES", "k": 2, "labels": "labels.txt", "outputs": {"labels": "TOP"}},
        {"type": "threshold", "input": "SCORE", "labels": ["no", "yes"], "outputs": {"label": "DECISION"}},
    ],
}


def write_model(root: Path, spec: object, *, raw: str | None = None, where: str = "version") -> tuple[Path, Path]:
    model_dir = root / "toy"
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "labels.txt").write_text("w\nx\ny\nz\n")
    (version_dir / "vocabulary.json").write_text(json.dumps({"color": ["red", "green", "blue"], "size": []}))
    target = (version_dir if where == "version" else model_dir) / SPEC_FILENAME
    target.write_text(raw if raw is not None else json.dumps(spec))
    return model_dir, version_dir


def load(root: Path, spec: object, config_text: str = CONFIG, **kwargs: Any) -> Any:
    model_dir, version_dir = write_model(root, spec, **kwargs)
    return load_processing(model_dir, version_dir, version_spec(parse_config_text(config_text, "config.pbtxt")))


def test_a_good_spec_loads_and_shows_public_tensors(tmp_path: Path) -> None:
    processing = load(tmp_path, GOOD)
    assert isinstance(processing, Pipeline)
    assert [(t.name, t.datatype, t.shape) for t in processing.public_inputs] == [
        ("IMAGE", "BYTES", (-1, 1)),
        ("NUMERIC", "FP32", (-1, 3)),
        ("CATEGORIES", "BYTES", (-1, 1)),
        ("EXTRA", "INT64", (-1, 2)),  # not filled by a step: passed through
    ]
    assert [(t.name, t.datatype, t.shape) for t in processing.public_outputs] == [
        ("LOGITS", "FP32", (-1, 4)),
        ("SCORE", "FP32", (-1, 1)),
        ("PROBABILITIES", "FP32", (-1, 4)),
        ("TOP", "BYTES", (-1, 2)),
        ("DECISION", "BYTES", (-1, 1)),
    ]
    assert processing.output_labels("PROBABILITIES") == ("w", "x", "y", "z")
    assert processing.output_labels("LOGITS") is None
    config = public_config_message(
        version_spec(parse_config_text(CONFIG, "config.pbtxt")), processing.public_inputs, processing.public_outputs
    )
    assert [(t.name, list(t.dims)) for t in config.input] == [("IMAGE", [1]), ("NUMERIC", [3]), ("CATEGORIES", [1]), ("EXTRA", [2])]
    assert [t.name for t in config.output] == ["LOGITS", "SCORE", "PROBABILITIES", "TOP", "DECISION"]


def test_no_spec_means_no_processing(tmp_path: Path) -> None:
    (tmp_path / "toy" / "1").mkdir(parents=True)
    config = version_spec(parse_config_text(CONFIG, "config.pbtxt"))
    assert load_processing(tmp_path / "toy", tmp_path / "toy" / "1", config) is None


def test_the_version_spec_wins_over_the_model_spec(tmp_path: Path) -> None:
    only_softmax = {"postprocess": [{"type": "softmax", "input": "LOGITS"}]}
    model_dir, version_dir = write_model(tmp_path, {"bad": 1}, where="model")
    (version_dir / SPEC_FILENAME).write_text(json.dumps(only_softmax))
    processing = load_processing(model_dir, version_dir, version_spec(parse_config_text(CONFIG, "c")))
    assert processing is not None and [t.name for t in processing.public_outputs] == ["LOGITS", "SCORE"]
    (version_dir / SPEC_FILENAME).unlink()
    with pytest.raises(ModelLoadError, match=r"toy/processing.json: the spec: unknown field 'bad'"):
        load_processing(model_dir, version_dir, version_spec(parse_config_text(CONFIG, "c")))


def mutate(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    spec = copy.deepcopy(GOOD)
    change(spec)
    return spec


def set_in(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        node = spec
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


BAD_SPECS = [
    ("top-level typo", set_in(("preproces",), []), "the spec: unknown field 'preproces'"),
    ("step without type", delete(("preprocess", 0, "type")), "preprocess[0]: field 'type': must be one of"),
    ("unknown step field", set_in(("preprocess", 0, "colour"), 1), "preprocess[0] (image): unknown field 'colour'"),
    ("mean per channel", set_in(("preprocess", 0, "mean"), [0.5, 0.5]), "preprocess[0] (image): field 'mean': needs 3 numbers"),
    ("std of zero", set_in(("preprocess", 0, "std"), [0.2, 0, 0.2]), "preprocess[0] (image): field 'std': must not contain 0"),
    ("unknown model input", set_in(("preprocess", 0, "model_input"), "PIXEL"), "preprocess[0] (image): field 'model_input': 'PIXEL' is not an input"),
    ("resize below the crop", set_in(("preprocess", 0, "resize"), [4, 16]), "preprocess[0] (image): field 'resize'"),
    ("format", set_in(("preprocess", 0, "format"), "raw"), "preprocess[0] (image): field 'format': must be one of"),
    ("pillow formats", set_in(("preprocess", 0, "formats"), ["NOPE"]), "preprocess[0] (image): field 'formats': 'NOPE'"),
    ("channel order", set_in(("preprocess", 0, "channel_order"), "L"), "preprocess[0] (image): field 'channel_order'"),
    ("two steps, one image input", set_in(("preprocess", 1, "model_input"), "PIXELS"), "preprocess[1] (numeric): field 'model_input': 'PIXELS' is already filled by an image step"),
    ("column count", set_in(("preprocess", 1, "columns"), ["a", "b"]), "preprocess[2] (categorical): field 'columns': the steps filling 'FEATURES' make 6 columns"),
    ("clip", set_in(("preprocess", 1, "columns", 0), {"name": "a", "clip": [3, 1]}), "preprocess[1] (numeric): field 'columns[0]': field 'clip': low 3.0 is above high 1.0"),
    ("missing policy", set_in(("preprocess", 1, "columns", 0), {"name": "a", "missing": "drop"}), "field 'columns[0]': field 'missing': must be one of"),
    ("fill with error", set_in(("preprocess", 1, "columns", 0), {"name": "a", "missing": "error", "fill": 1}), "field 'columns[0]': field 'fill': given, but 'missing' is 'error'"),
    ("std", set_in(("preprocess", 1, "columns", 0), {"name": "a", "standardize": {"mean": 1, "std": 0}}), "field 'columns[0]': field 'standardize': field 'std': must be > 0"),
    ("both scalings", set_in(("preprocess", 1, "columns", 0), {"name": "a", "standardize": {"mean": 0, "std": 1}, "minmax": {"min": 0, "max": 1}}), "field 'minmax': a column is standardized or min-max scaled, not both"),
    ("duplicate column", set_in(("preprocess", 1, "columns"), ["a", "a", "c"]), "preprocess[1] (numeric): field 'columns': names column 'a' twice"),
    ("vocabulary file", set_in(("preprocess", 2, "vocabulary"), "vocab.json"), "preprocess[2] (categorical): field 'vocabulary': "),
    ("vocabulary outside", set_in(("preprocess", 2, "vocabulary"), "../vocabulary.json"), "field 'vocabulary': '../vocabulary.json' must be a file name inside the version directory"),
    ("column not in vocabulary", set_in(("preprocess", 2, "columns"), ["shape"]), "preprocess[2] (categorical): field 'columns': column 'shape' has no entry"),
    ("empty vocabulary", set_in(("preprocess", 2, "columns"), ["size"]), "preprocess[2] (categorical): field 'vocabulary': vocabulary.json: 'size' must be a non-empty list"),
    ("index width", set_in(("preprocess", 2, "encoding"), "index"), "preprocess[2] (categorical): field 'columns': the steps filling 'FEATURES' make 4 columns ('NUMERIC' 3, 'CATEGORIES' 1), but the model input has 7"),
    ("onehot into INT", set_in(("preprocess", 1, "model_input"), "EXTRA"), "preprocess[1] (numeric): field 'model_input': 'EXTRA' is INT64; numeric columns fill FP32 or FP64"),
    ("zeros needs onehot", set_in(("preprocess", 2), {"type": "categorical", "input": "C", "model_input": "EXTRA", "vocabulary": "vocabulary.json", "columns": ["color"], "encoding": "index", "unknown": "zeros"}), "preprocess[2] (categorical): field 'unknown': 'zeros' needs encoding 'onehot'"),
    ("public input reused", set_in(("preprocess", 1, "input"), "EXTRA"), "preprocess[1] (numeric): field 'input': 'EXTRA' is also an input of the model passed through as is"),
    ("two steps, one input", set_in(("preprocess", 2, "input"), "NUMERIC"), "preprocess[2] (categorical): field 'input': 'NUMERIC' is also the input of preprocess[1] (numeric)"),
    ("softmax input", set_in(("postprocess", 0, "input"), "LOGIT"), "postprocess[0] (softmax): field 'input': no tensor 'LOGIT'"),
    ("softmax overwrites", set_in(("postprocess", 0, "output"), "SCORE"), "postprocess[0] (softmax): field 'output': 'SCORE' already names a tensor"),
    ("k", set_in(("postprocess", 1, "k"), 5), "postprocess[1] (topk): field 'k': 5 is more than the 4 classes"),
    ("k type", set_in(("postprocess", 1, "k"), "2"), "postprocess[1] (topk): field 'k': must be an integer >= 1"),
    ("label count", set_in(("postprocess", 1, "labels"), ["a", "b"]), "postprocess[1] (topk): field 'labels': 2 labels for the 4 classes"),
    ("label file", set_in(("postprocess", 1, "labels"), "missing.txt"), "postprocess[1] (topk): field 'labels': "),
    ("topk outputs", set_in(("postprocess", 1, "outputs"), {}), "postprocess[1] (topk): field 'outputs': name at least one"),
    ("labels output without labels", delete(("postprocess", 1, "labels")), "postprocess[1] (topk): field 'labels': needed for the 'labels' output"),
    ("threshold on 4 classes", set_in(("postprocess", 2, "input"), "LOGITS"), "postprocess[2] (threshold): field 'input': 'LOGITS' has shape [-1, 4]"),
    ("threshold labels", set_in(("postprocess", 2, "labels"), ["a", "b", "c"]), "postprocess[2] (threshold): field 'labels': a binary classifier needs 2 labels"),
    ("threshold value", set_in(("postprocess", 2, "threshold"), "high"), "postprocess[2] (threshold): field 'threshold': must be a finite number"),
    ("outputs", set_in(("outputs",), ["LOGITS", "NOPE"]), "the spec: field 'outputs': 'NOPE' is neither a model output nor a step output"),
    ("empty", lambda spec: spec.clear(), "the spec: declares no preprocess or postprocess steps"),
]


@pytest.mark.parametrize(("change", "message"), [pytest.param(c, m, id=i) for i, c, m in BAD_SPECS])
def test_bad_specs_name_the_step_and_field(tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(ModelLoadError) as error:
        load(tmp_path, mutate(change))
    text = error.value.message
    assert text.startswith(f"model 'toy': {tmp_path / 'toy' / '1' / SPEC_FILENAME}: "), text
    assert message in text, text


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"processing.json: not valid JSON"):
        load(tmp_path, None, raw="{not json")


def test_model_input_of_the_wrong_type_or_shape(tmp_path: Path) -> None:
    config = CONFIG.replace('name: "PIXELS" data_type: TYPE_FP32 dims: [ 3, 8, 8 ]', 'name: "PIXELS" data_type: TYPE_INT32 dims: [ 3, 8, 8 ]')
    with pytest.raises(ModelLoadError, match=r"preprocess\[0\] \(image\): field 'model_input': 'PIXELS' is INT32"):
        load(tmp_path, GOOD, config)
    config = CONFIG.replace("dims: [ 3, 8, 8 ]", "dims: [ 3, -1, 8 ]")
    with pytest.raises(ModelLoadError, match=r"preprocess\[0\] \(image\): field 'layout': .* need a fixed"):
        load(tmp_path, GOOD, config)
    config = CONFIG.replace("dims: [ 3, 8, 8 ]", "dims: [ 4, 8, 8 ]")
    with pytest.raises(ModelLoadError, match=r"preprocess\[0\] \(image\): field 'layout': 'PIXELS' has 4 channels"):
        load(tmp_path, GOOD, config)


def test_a_missing_label_filename_fails_the_load_as_in_triton(tmp_path: Path) -> None:
    (tmp_path / "toy" / "1").mkdir(parents=True)
    config = version_spec(parse_config_text(CONFIG.replace('dims: [ 4 ] }', 'dims: [ 4 ] label_filename: "classes.txt" }'), "c"))
    with pytest.raises(ModelLoadError, match=r"output 'LOGITS': label_filename 'classes.txt': cannot read"):
        load_processing(tmp_path / "toy", tmp_path / "toy" / "1", config)
    (tmp_path / "toy" / "1" / "classes.txt").write_text("a\nb\nc\nd\n")  # the version directory will do
    assert load_processing(tmp_path / "toy", tmp_path / "toy" / "1", config) is None
    (tmp_path / "toy" / "classes.txt").write_text("a\nb\nc\nd\n")  # Triton's place, the model directory
    assert load_processing(tmp_path / "toy", tmp_path / "toy" / "1", config) is None

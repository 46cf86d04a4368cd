"""Triton's classification extension: "score:index[:label]" strings of the top K per batch row."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from runtime.errors import InvalidInput
from runtime.processing.classification import classify, classify_outputs, config_labels
from runtime.repository.model_config import parse_config_text, version_spec
from runtime.types import RequestedOutput

LABEL = "model 'toy' version 1"


def test_float_scores_print_as_std_to_string_with_labels() -> None:
    x = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    out = classify(LABEL, "P", x, 2, ["a", "b", "c"], batched=True)
    assert out.shape == (2, 2) and out.dtype == object
    assert out.tolist() == [[b"0.700000:1:b", b"0.200000:2:c"], [b"0.500000:0:a", b"0.250000:1:b"]]


def test_without_labels_and_k_above_the_class_count() -> None:
    x = np.array([[3.0, -1.0]], dtype=np.float64)
    assert classify(LABEL, "P", x, 5, None, batched=True).tolist() == [[b"3.000000:0", b"-1.000000:1"]]


def test_integer_outputs_rank_and_print_as_integers() -> None:
    x = np.array([[4, 16, 9, 16]], dtype=np.int32)  # tie: the lower index first
    assert classify(LABEL, "OUT", x, 3, None, batched=True).tolist() == [[b"16:1", b"16:3", b"9:2"]]


def test_unbatched_outputs_rank_all_elements_and_return_k() -> None:
    x = np.array([[0.1, 0.9], [0.3, 0.2]], dtype=np.float16)
    out = classify(LABEL, "P", x, 2, ["w", "x", "y", "z"], batched=False)
    assert out.shape == (2,)
    assert out.tolist() == [b"0.899902:1:x", b"0.300049:2:y"]  # FP16 values, ranked over the flattened tensor


def test_rows_with_several_dims_are_flattened() -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    out = classify(LABEL, "P", x, 1, None, batched=True)
    assert out.tolist() == [[b"5.000000:5"], [b"11.000000:5"]]


@pytest.mark.parametrize("k", [-1, "3", 2.5, True])
def test_k_must_be_a_positive_integer(k: Any) -> None:
    with pytest.raises(InvalidInput, match=r"output 'P': parameter 'classification' must be a positive integer"):
        classify(LABEL, "P", np.zeros((1, 3), np.float32), k, None, batched=True)


def test_bytes_outputs_cannot_be_classified() -> None:
    with pytest.raises(InvalidInput, match=r"output 'T' is not numeric"):
        classify(LABEL, "T", np.array([[b"a"]], dtype=object), 1, None, batched=True)


def served(tmp_path: Path, processing: object = None) -> Any:
    config = version_spec(parse_config_text(
        'name: "toy" max_batch_size: 4 output [ { name: "P" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "l.txt" },'
        ' { name: "Q" data_type: TYPE_FP32 dims: [ 3 ] } ]',
        "config.pbtxt",
    ))
    (tmp_path / "l.txt").write_text("red\ngreen\nblue\n")
    labels = config_labels(tmp_path, config, tmp_path / "1")  # what the loader reads once per version
    return SimpleNamespace(label=LABEL, max_batch_size=4, processing=processing, config=config, labels=labels)


def test_classify_outputs_uses_label_filename_and_only_touches_requested_outputs(tmp_path: Path) -> None:
    outputs = {"P": np.array([[0.2, 0.5, 0.3]], np.float32), "Q": np.array([[1.0, 0.0, 2.0]], np.float32)}
    requested = [RequestedOutput("P", classification=2), RequestedOutput("Q")]
    model = served(tmp_path)
    result = classify_outputs(model, requested, outputs)
    assert result["P"].tolist() == [[b"0.500000:1:green", b"0.300000:2:blue"]]
    assert result["Q"] is outputs["Q"]
    assert classify_outputs(model, None, outputs) is outputs
    # Labels are the ones read at load: a replaced file changes nothing until the version loads again
    # (the loader's fingerprint counts label files, so the next load or poll picks it up).
    (tmp_path / "l.txt").write_text("rouge\nvert\nbleu, longer\n")
    result = classify_outputs(model, [RequestedOutput("P", classification=1)], outputs)
    assert result["P"].tolist() == [[b"0.500000:1:green"]]


def test_processing_labels_take_precedence(tmp_path: Path) -> None:
    processing = SimpleNamespace(output_labels=lambda name: ("x", "y", "z") if name == "Q" else None)
    outputs = {"Q": np.array([[1.0, 0.0, 2.0]], np.float32)}
    result = classify_outputs(served(tmp_path, processing), [RequestedOutput("Q", classification=1)], outputs)
    assert result["Q"].tolist() == [[b"2.000000:2:z"]]

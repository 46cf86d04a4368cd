"""The processing examples (image_classifier, tabular_classifier) load, run and are not degenerate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.processing import reference as ref
from runtime.examples import IMAGE_CLASSIFIER_LABELS, TABULAR_VOCABULARY, write_example_repository
from runtime.processing import Pipeline, load_processing
from runtime.repository.model_config import read_config_file, version_spec

LABEL = "model 'example' version 1"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_repository(tmp_path_factory.mktemp("examples"))


def load(repository: Path, name: str) -> tuple[Pipeline, ort.InferenceSession]:
    processing = load_processing(repository / name, repository / name / "1", version_spec(read_config_file(repository / name)))
    assert isinstance(processing, Pipeline)
    session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return processing, session


def test_image_classifier_labels_vary_with_the_picture(repository: Path) -> None:
    processing, session = load(repository, "image_classifier")
    images = np.empty((12, 1), dtype=object)
    images[:, 0] = [ref.encode(ref.picture(40 + s, 50, seed=s), "PNG") for s in range(12)]
    model_inputs = processing.preprocess(LABEL, {"IMAGE": images})
    outputs = dict(zip(["LOGITS"], session.run(["LOGITS"], model_inputs)))
    public = processing.postprocess(LABEL, outputs)
    assert set(public) == {"PROBABILITIES", "LABELS", "SCORES"}
    np.testing.assert_allclose(public["PROBABILITIES"].sum(axis=1), 1, rtol=1e-5)
    top = {label.decode() for label in public["LABELS"][:, 0]}
    assert top <= set(IMAGE_CLASSIFIER_LABELS) and len(top) >= 2
    assert processing.model_output_labels() == {"LOGITS": IMAGE_CLASSIFIER_LABELS}


def test_tabular_classifier_predicts_both_classes(repository: Path) -> None:
    processing, session = load(repository, "tabular_classifier")
    rng = np.random.default_rng(0)
    rows = 64
    numeric = np.column_stack([
        rng.uniform(18, 90, rows), rng.uniform(0, 200000, rows), rng.uniform(0, 72, rows), rng.uniform(10, 120, rows)
    ]).astype(np.float32)
    categories = np.empty((rows, 2), dtype=object)
    categories[:, 0] = [w.encode() for w in rng.choice(TABULAR_VOCABULARY["country"], rows)]
    categories[:, 1] = [w.encode() for w in rng.choice(TABULAR_VOCABULARY["plan"], rows)]
    model_inputs = processing.preprocess(LABEL, {"NUMERIC": numeric, "CATEGORIES": categories})
    public = processing.postprocess(LABEL, {"PROBABILITY": session.run(["PROBABILITY"], model_inputs)[0]})
    assert {label.decode() for label in public["LABEL"][:, 0]} == {"stays", "churns"}
    assert ((public["PROBABILITY"] >= 0.5).astype(np.int64) == public["CLASS_ID"]).all()

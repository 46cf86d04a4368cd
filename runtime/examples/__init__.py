"""Example ONNX models, built in code, and a Triton-layout model repository holding them.

Every model is made with `onnx.helper`; weights come from `numpy.random.default_rng(seed)`,
so the same call always gives the same bytes and nothing is downloaded. The quick-start,
benchmarks and tests use these models.

    graph.py       small ONNX builders (tensors, initializers, checked model wrapper)
    models.py      the example models and the benchmark's wide_mlp
    configs.py     their config.pbtxt texts and processing.json contents
    repository.py  save_model, and write_example_repository laying the examples out
"""

from __future__ import annotations

from runtime.examples.configs import IMAGE_CLASSIFIER_PROCESSING, TABULAR_CLASSIFIER_PROCESSING
from runtime.examples.models import (
    IMAGE_CLASSIFIER_LABELS,
    TABULAR_LABELS,
    TABULAR_NUMERIC_COLUMNS,
    TABULAR_VOCABULARY,
    TEXT_LOCALE,
    build_image_classifier,
    build_image_cnn,
    build_mlp,
    build_simple,
    build_tabular_classifier,
    build_text,
    build_wide_mlp,
    tabular_feature_count,
)
from runtime.examples.repository import (
    CONFIG_FILENAME,
    EXAMPLE_MODELS,
    MODEL_FILENAME,
    save_model,
    write_example_repository,
)

__all__ = [
    "CONFIG_FILENAME",
    "EXAMPLE_MODELS",
    "IMAGE_CLASSIFIER_LABELS",
    "IMAGE_CLASSIFIER_PROCESSING",
    "MODEL_FILENAME",
    "TABULAR_CLASSIFIER_PROCESSING",
    "TABULAR_LABELS",
    "TABULAR_NUMERIC_COLUMNS",
    "TABULAR_VOCABULARY",
    "TEXT_LOCALE",
    "build_image_classifier",
    "build_image_cnn",
    "build_mlp",
    "build_simple",
    "build_tabular_classifier",
    "build_text",
    "build_wide_mlp",
    "save_model",
    "tabular_feature_count",
    "write_example_repository",
]

"""Writing models into a Triton-layout model repository, and the example repository itself.

`write_example_repository` lays the examples out as

    root/<model>/config.pbtxt        (absent for image_cnn: the server auto-completes it)
    root/<model>/1/model.onnx
    root/<model>/1/processing.json   (image_classifier, tabular_classifier: see the README's
                                      "Pre- and post-processing"; with labels.txt / vocabulary.json)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import onnx

from runtime.examples.configs import (
    IMAGE_CLASSIFIER_CONFIG,
    IMAGE_CLASSIFIER_PROCESSING,
    MLP_CONFIG,
    SIMPLE_CONFIG,
    TABULAR_CLASSIFIER_CONFIG,
    TABULAR_CLASSIFIER_PROCESSING,
    TEXT_CONFIG,
)
from runtime.examples.models import (
    IMAGE_CLASSIFIER_LABELS,
    TABULAR_VOCABULARY,
    build_image_classifier,
    build_image_cnn,
    build_mlp,
    build_simple,
    build_tabular_classifier,
    build_text,
)

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"

EXAMPLE_MODELS: tuple[str, ...] = ("simple", "mlp", "image_cnn", "text", "image_classifier", "tabular_classifier")


def _write_atomically(path: Path, data: bytes) -> None:
    # A server polling the repository must never read a half-written file: write a
    # hidden temporary file beside the target, then rename it over the target.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _check_model_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"model name {name!r} must be a single, plain directory name")


def save_model(
    model: onnx.ModelProto, repo: Path, name: str, version: int = 1, config_pbtxt: str | None = None
) -> Path:
    """Write repo/name/version/model.onnx (and repo/name/config.pbtxt if given); return the model file.

    Overwrites what is there. With config_pbtxt None an existing config.pbtxt is left
    alone, so adding a version to a configured model keeps its config.
    """
    _check_model_name(name)
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    model_dir = Path(repo) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    model_path = version_dir / MODEL_FILENAME
    _write_atomically(model_path, model.SerializeToString())
    if config_pbtxt is not None:
        _write_atomically(model_dir / CONFIG_FILENAME, config_pbtxt.encode())
    return model_path


def write_example_repository(root: Path) -> Path:
    """Write every model in EXAMPLE_MODELS under root, Triton layout; return root.

    Idempotent: files are overwritten with identical bytes. image_cnn gets no config.pbtxt
    (a stale one is removed) so that the server must auto-complete it from the ONNX file.
    Other files under root are left alone.
    """
    root = Path(root)
    save_model(build_simple(), root, "simple", config_pbtxt=SIMPLE_CONFIG)
    save_model(build_mlp(), root, "mlp", config_pbtxt=MLP_CONFIG)
    save_model(build_image_cnn(), root, "image_cnn")
    (root / "image_cnn" / CONFIG_FILENAME).unlink(missing_ok=True)
    save_model(build_text(), root, "text", config_pbtxt=TEXT_CONFIG)
    save_model(build_image_classifier(), root, "image_classifier", config_pbtxt=IMAGE_CLASSIFIER_CONFIG)
    _write_files(
        root / "image_classifier" / "1",
        {
            "processing.json": _json_text(IMAGE_CLASSIFIER_PROCESSING),
            "labels.txt": "".join(f"{label}\n" for label in IMAGE_CLASSIFIER_LABELS),
        },
    )
    save_model(build_tabular_classifier(), root, "tabular_classifier", config_pbtxt=TABULAR_CLASSIFIER_CONFIG)
    _write_files(
        root / "tabular_classifier" / "1",
        {
            "processing.json": _json_text(TABULAR_CLASSIFIER_PROCESSING),
            "vocabulary.json": _json_text(TABULAR_VOCABULARY),
        },
    )
    return root


def _json_text(value: object) -> str:
    return json.dumps(value, indent=2) + "\n"


def _write_files(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        _write_atomically(directory / name, text.encode("utf-8"))

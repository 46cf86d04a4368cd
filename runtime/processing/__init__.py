"""Declarative pre- and post-processing per model version (see the README's processing section).

`load_processing` reads a model's processing spec; the ServedModel then validates requests
against `public_inputs`, runs `preprocess` per request before batching and `postprocess` per
request after the split, so clients see one model.

Modules: spec (processing.json -> checked step specs), image / tabular / postprocess (the steps),
pipeline (steps bound to the model's config), kernels (picks the Cython build of csrc/processing.pyx
or the numpy twins in _py), classification (Triton's classification extension, for every model).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runtime.errors import ModelLoadError
from runtime.processing.classification import classify_outputs, config_labels
from runtime.processing.spec import SpecError, find_spec, read_spec
from runtime.spec import VersionSpec
from runtime.types import Array, TensorSpec

if TYPE_CHECKING:
    from runtime.processing.pipeline import Pipeline

__all__ = ["Pipeline", "Processing", "classify_outputs", "load_processing"]


class Processing(Protocol):
    @property
    def public_inputs(self) -> list[TensorSpec]:
        """The inputs clients send (shape with -1 for the batch dim when the model batches)."""
        ...

    @property
    def public_outputs(self) -> list[TensorSpec]:
        """The outputs clients receive."""
        ...

    def preprocess(self, label: str, inputs: dict[str, Array]) -> dict[str, Array]:
        """Client inputs (already validated against public_inputs) -> model inputs. Raises InvalidInput."""
        ...

    def postprocess(self, label: str, outputs: dict[str, Array]) -> dict[str, Array]:
        """Model outputs of one request -> the public outputs."""
        ...


def load_processing(
    model_dir: Path, version_dir: Path, config: VersionSpec, labels: dict[str, tuple[str, ...]] | None = None
) -> Processing | None:
    """The model version's processing, or None when it declares none.

    The spec is `<version>/processing.json`, else `<model>/processing.json`. Also checks that the outputs'
    label_filename files can be read (Triton refuses to load without them). Raises ModelLoadError naming
    the file, step and field.
    """
    if labels is None:
        labels = config_labels(model_dir, config, version_dir)
    path = find_spec(model_dir, version_dir)
    if path is None:
        return None
    from runtime.processing.pipeline import Pipeline  # its image steps load PIL: only for models with processing

    try:
        return Pipeline(read_spec(path, version_dir), config, labels)
    except SpecError as exc:
        raise ModelLoadError(f"model {config.name!r}: {path}: {exc}") from None


def __getattr__(name: str) -> Any:
    # Pipeline is imported when first asked for, so that importing runtime.model loads no PIL.
    if name == "Pipeline":
        from runtime.processing.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

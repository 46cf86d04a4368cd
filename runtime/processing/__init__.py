"""Declarative pre- and post-processing per model version (see the README's processing section).

`load_processing` reads a model's processing spec; the ServedModel then validates requests
against `public_inputs`, runs `preprocess` per request before batching and `postprocess` per
request after the split, so clients see one model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from runtime.repository.model_config import ModelConfig
from runtime.types import Array, TensorSpec


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


def load_processing(model_dir: Path, version_dir: Path, config: ModelConfig) -> Processing | None:
    """The model version's processing, or None when it declares none."""
    return None

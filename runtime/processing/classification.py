"""Triton's classification extension: an output requested with parameter `classification: K` is answered as
BYTES "score:index[:label]" strings of its K largest values per batch row (shape [batch, K], or [K] for a
model without a batch dim), largest first, ties by lower index. Scores of float outputs print as C's "%f"
(std::to_string, as Triton), of integer outputs as integers. Labels: line `index` of the output's
`label_filename` (a file in the model directory) or, for a processing model, of its step's labels.
It applies to every numeric output, with or without processing.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.errors import InvalidInput, ModelLoadError, quoted
from runtime.processing import kernels
from runtime.processing.postprocess import as_rows
from runtime.processing.spec import read_labels
from runtime.spec import VersionSpec
from runtime.paths import inside
from runtime.types import Array, RequestedOutput


class Classified(Protocol):
    """What the classification extension reads of a loaded version (ServedModel has it)."""

    @property
    def label(self) -> str: ...

    @property
    def max_batch_size(self) -> int: ...

    @property
    def processing(self) -> object | None: ...

    @property
    def config(self) -> VersionSpec: ...

    @property
    def labels(self) -> Mapping[str, Sequence[str]]: ...



__all__ = ["Classified", "classify", "classify_outputs", "config_labels", "output_labels"]


def classify(label: str, name: str, array: Array, k: object, labels: Sequence[str] | None, batched: bool) -> Array:
    """The classification strings for one output of one request."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidInput(f"{label}: output {name!r}: parameter 'classification' must be a positive integer, got {k!r}")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(
            f"{label}: output {name!r} is not numeric; the classification extension ranks numeric outputs"
        )
    rows = array.shape[0] if batched and array.ndim else 1
    flat = array.reshape(rows, -1)
    classes = flat.shape[1]
    count = min(k, classes)
    indices = np.empty((rows, count), dtype=np.int64)
    if array.dtype.kind == "f":
        scores = as_rows(flat)
        values = np.empty((rows, count), dtype=scores.dtype)
        kernels.topk(scores, count, values, indices)
        texts = [f"{v:f}" for v in values.ravel().tolist()]  # C's "%f", as std::to_string
    else:
        indices[...] = np.argsort(-flat.astype(np.float64), axis=1, kind="stable")[:, :count]
        texts = [str(v) for v in np.take_along_axis(flat, indices, axis=1).ravel().tolist()]
    out = np.empty(rows * count, dtype=object)
    for position, (text, index) in enumerate(zip(texts, indices.ravel().tolist())):
        if labels is not None and index < len(labels):
            out[position] = f"{text}:{index}:{labels[index]}".encode()
        else:
            out[position] = f"{text}:{index}".encode()
    return out.reshape((rows, count) if batched else (count,))


def classify_outputs(
    served: Classified, requested: list[RequestedOutput] | None, outputs: dict[str, Array]
) -> dict[str, Array]:
    """Replace each output requested with `classification` by its strings; the engine calls this after finish()."""
    if not requested or not any(output.classification for output in requested):
        return outputs
    result = dict(outputs)
    batched = served.max_batch_size > 0
    for output in requested:
        if not output.classification:  # 0 (the default), or false / null from a JSON client: not asked
            continue
        labels = output_labels(served, output.name)
        result[output.name] = classify(
            served.label, output.name, outputs[output.name], output.classification, labels, batched
        )
    return result


def output_labels(served: Classified, name: str) -> Sequence[str] | None:
    processing = served.processing
    lookup = getattr(processing, "output_labels", None)
    if lookup is not None:
        labels: Sequence[str] | None = lookup(name)
        return labels
    return served.labels.get(name)  # read once at load (config_labels)


def config_labels(model_dir: Path, config: VersionSpec, version_dir: Path | None = None) -> dict[str, tuple[str, ...]]:
    """Output name -> labels from the outputs' label_filename: a file in the model directory (Triton's place),
    else in the version directory; either way it must resolve inside that directory (paths.inside).
    ModelLoadError if neither can be read."""
    labels = {}
    for output in config.outputs:
        if not output.label_filename:
            continue
        what = f"model {config.name!r}: output {output.name!r}: label_filename"
        candidates = [inside(model_dir, output.label_filename, what)]
        if version_dir is not None:
            candidates.append(inside(version_dir, output.label_filename, what, "version directory"))
        path = next((p for p in candidates if p.is_file()), candidates[0])
        try:
            labels[output.name] = read_labels(path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ModelLoadError(
                f"{what} {quoted(output.label_filename)}: cannot read it from the model or version directory ({reason})"
            ) from None
    return labels

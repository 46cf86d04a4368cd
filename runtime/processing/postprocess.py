"""Post-processing steps on one request's outputs: softmax, top-k with labels, a threshold for binary classifiers.

Each step reads one tensor (a model output or an earlier step's) and adds or replaces tensors by name.
Scores are FP16/FP32/FP64; FP16 is computed in FP32 and cast back.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.processing import kernels
from runtime.processing.spec import SoftmaxSpec, SpecError, ThresholdSpec, TopKSpec
from runtime.types import Array, TensorSpec

SCORE_TYPES = ("FP16", "FP32", "FP64")


def as_rows(array: Array) -> Array:
    """A C-contiguous [rows, classes] FP32/FP64 view or copy over the last axis (FP16 and others -> FP32)."""
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)
    classes = array.shape[-1] if array.ndim else 1
    return np.ascontiguousarray(array.reshape(-1, classes))


def label_array(labels: Sequence[str]) -> Array:
    out = np.empty(len(labels), dtype=object)
    out[:] = [label.encode("utf-8") for label in labels]
    return out


def _score_input(where: str, tensors: dict[str, TensorSpec], name: str) -> TensorSpec:
    spec = tensors.get(name)
    if spec is None:
        raise SpecError(f"{where}: field 'input': no tensor {name!r} here (known: {', '.join(tensors)})")
    if spec.datatype not in SCORE_TYPES:
        raise SpecError(f"{where}: field 'input': {name!r} is {spec.datatype}; this step reads FP16, FP32 or FP64")
    if not spec.shape:
        raise SpecError(f"{where}: field 'input': {name!r} is a scalar; this step reads its last axis")
    return spec


def _new_name(where: str, tensors: dict[str, TensorSpec], field: str, name: str) -> None:
    if name in tensors:
        raise SpecError(f"{where}: field {field!r}: {name!r} already names a tensor")


class SoftmaxStep:
    def __init__(self, spec: SoftmaxSpec, tensors: dict[str, TensorSpec]) -> None:
        source = _score_input(spec.where, tensors, spec.input)
        if spec.output != spec.input:
            _new_name(spec.where, tensors, "output", spec.output)
        self.input, self.output = spec.input, spec.output
        tensors[spec.output] = TensorSpec(spec.output, source.datatype, source.shape)

    def run(self, tensors: dict[str, Array]) -> None:
        array = tensors[self.input]
        rows = as_rows(array)
        result = np.empty_like(rows)
        kernels.softmax(rows, result)
        tensors[self.output] = result.reshape(array.shape).astype(array.dtype, copy=False)


class TopKStep:
    def __init__(self, spec: TopKSpec, tensors: dict[str, TensorSpec]) -> None:
        source = _score_input(spec.where, tensors, spec.input)
        classes = source.shape[-1]
        if classes < 1:
            raise SpecError(f"{spec.where}: field 'input': {spec.input!r} needs a fixed class count (last dim), got -1")
        if spec.k > classes:
            raise SpecError(f"{spec.where}: field 'k': {spec.k} is more than the {classes} classes of {spec.input!r}")
        if spec.labels is not None and len(spec.labels) != classes:
            raise SpecError(
                f"{spec.where}: field 'labels': {len(spec.labels)} labels for the {classes} classes of {spec.input!r}"
            )
        self.input, self.k = spec.input, spec.k
        self.scores, self.indices, self.label_output = spec.scores, spec.indices, spec.label_output
        self.labels = label_array(spec.labels) if spec.labels is not None else None
        shape = source.shape[:-1] + (spec.k,)
        for field, name, datatype in (
            ("outputs.scores", spec.scores, source.datatype),
            ("outputs.indices", spec.indices, "INT64"),
            ("outputs.labels", spec.label_output, "BYTES"),
        ):
            if name:
                _new_name(spec.where, tensors, field, name)
                tensors[name] = TensorSpec(name, datatype, shape)

    def run(self, tensors: dict[str, Array]) -> None:
        array = tensors[self.input]
        rows = as_rows(array)
        values = np.empty((rows.shape[0], self.k), dtype=rows.dtype)
        indices = np.empty((rows.shape[0], self.k), dtype=np.int64)
        kernels.topk(rows, self.k, values, indices)
        shape = array.shape[:-1] + (self.k,)
        if self.scores:
            tensors[self.scores] = values.reshape(shape).astype(array.dtype, copy=False)
        if self.indices:
            tensors[self.indices] = indices.reshape(shape)
        if self.label_output and self.labels is not None:
            tensors[self.label_output] = self.labels[indices].reshape(shape)


class ThresholdStep:
    """Binary classifier: positive (index 1) when the positive score >= threshold.

    The positive score is the input's last column: [..., 1] holds it alone, [..., 2] is (negative, positive).
    """

    def __init__(self, spec: ThresholdSpec, tensors: dict[str, TensorSpec]) -> None:
        source = _score_input(spec.where, tensors, spec.input)
        if source.shape[-1] not in (1, 2):
            raise SpecError(
                f"{spec.where}: field 'input': {spec.input!r} has shape {list(source.shape)}; a threshold reads "
                "[..., 1] (positive score) or [..., 2] (negative, positive)"
            )
        self.input, self.threshold = spec.input, spec.threshold
        self.index_output, self.label_output = spec.index_output, spec.label_output
        self.labels = label_array(spec.labels) if spec.labels is not None else None
        shape = source.shape[:-1] + (1,)
        for field, name, datatype in (
            ("outputs.index", spec.index_output, "INT64"),
            ("outputs.label", spec.label_output, "BYTES"),
        ):
            if name:
                _new_name(spec.where, tensors, field, name)
                tensors[name] = TensorSpec(name, datatype, shape)

    def run(self, tensors: dict[str, Array]) -> None:
        array = tensors[self.input]
        positive = (array[..., -1:] >= self.threshold).astype(np.int64)
        if self.index_output:
            tensors[self.index_output] = positive
        if self.label_output and self.labels is not None:
            tensors[self.label_output] = self.labels[positive]


PostStep = SoftmaxStep | TopKStep | ThresholdStep

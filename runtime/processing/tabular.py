"""Tabular pre-processing steps: numeric columns (missing values, clip, standardise / min-max) and
categorical string columns (vocabulary -> index or one-hot, with an unknown-category policy).

Each step fills its block of columns of a [rows, width] model input; several steps may fill one model input
side by side, in step order. The kernels write straight into that block.
"""
from __future__ import annotations

import numpy as np

from runtime.errors import InvalidInput
from runtime.processing import _py, kernels
from runtime.processing.spec import CategoricalSpec, NumericSpec, SpecError
from runtime.types import Array, TensorSpec

_UNKNOWN_POLICY = {"error": _py.UNKNOWN_ERROR, "oov": _py.UNKNOWN_OOV, "zeros": _py.UNKNOWN_ZEROS}
NUMERIC_MODEL_TYPES = ("FP32", "FP64")
ONEHOT_MODEL_TYPES = ("FP32", "FP64", "INT32", "INT64")
INDEX_MODEL_TYPES = ("INT64", "INT32", "FP32", "FP64")


def _show(value: object, limit: int = 60) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


class NumericStep:
    def __init__(self, spec: NumericSpec, model_input: TensorSpec) -> None:
        if model_input.datatype not in NUMERIC_MODEL_TYPES:
            raise SpecError(
                f"{spec.where}: field 'model_input': {model_input.name!r} is {model_input.datatype}; "
                f"numeric columns fill {' or '.join(NUMERIC_MODEL_TYPES)}"
            )
        self.spec = spec
        self.input = spec.input
        columns = spec.columns
        self.names = [c.name for c in columns]
        self.width = len(columns)
        self.missing_error = np.array([c.missing == "error" for c in columns], dtype=np.uint8)
        self.fill = np.array([c.fill for c in columns], dtype=np.float64)
        self.lo = np.array([c.clip[0] for c in columns], dtype=np.float64)
        self.hi = np.array([c.clip[1] for c in columns], dtype=np.float64)
        self.mul = np.array([c.mul for c in columns], dtype=np.float64)
        self.add = np.array([c.add for c in columns], dtype=np.float64)
        self.public = TensorSpec(spec.input, spec.datatype, (model_input.shape[0], self.width))

    def run(self, label: str, array: Array, out: Array) -> None:
        """out: this step's [rows, width] block of the model input."""
        values = np.ascontiguousarray(array)
        bad = kernels.scale_columns(values, out, self.missing_error, self.fill, self.lo, self.hi, self.mul, self.add)
        if bad >= 0:
            row, column = divmod(bad, self.width)
            raise InvalidInput(
                f"{label}: input {self.input!r} row {row} column {column} ({self.names[column]!r}): missing value "
                "(NaN), and the column's policy is 'error'"
            )


class CategoricalStep:
    def __init__(self, spec: CategoricalSpec, model_input: TensorSpec) -> None:
        allowed = ONEHOT_MODEL_TYPES if spec.encoding == "onehot" else INDEX_MODEL_TYPES
        if model_input.datatype not in allowed:
            raise SpecError(
                f"{spec.where}: field 'model_input': {model_input.name!r} is {model_input.datatype}; "
                f"{spec.encoding} codes fill {', '.join(allowed)}"
            )
        self.spec = spec
        self.input = spec.input
        self.names = list(spec.columns)
        self.columns = len(spec.columns)
        self.width = spec.width()
        self.lookups = [{word.encode("utf-8"): code for code, word in enumerate(v)} for v in spec.vocabularies]
        offsets = []
        position = 0
        extra = 1 if spec.unknown == "oov" else 0
        for vocabulary in spec.vocabularies:
            offsets.append(position)
            position += len(vocabulary) + extra if spec.encoding == "onehot" else 1
        self.offsets = np.array(offsets, dtype=np.int64)
        self.onehot = spec.encoding == "onehot"
        self.policy = _UNKNOWN_POLICY[spec.unknown]
        self.public = TensorSpec(spec.input, "BYTES", (model_input.shape[0], self.columns))

    def run(self, label: str, array: Array, out: Array) -> None:
        """out: this step's zeroed [rows, width] block of the model input."""
        bad = kernels.encode_categories(array, self.lookups, out, self.offsets, self.onehot, self.policy)
        if bad >= 0:
            row, column = divmod(bad, self.columns)
            raise InvalidInput(
                f"{label}: input {self.input!r} row {row} column {column} ({self.names[column]!r}): unknown category "
                f"{_show(array[row, column])}, and the step's policy is 'error' "
                f"(known: {len(self.lookups[column])} values in the vocabulary)"
            )

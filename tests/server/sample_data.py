"""Deterministic sample tensors for every V2 datatype, including edge values."""
from __future__ import annotations

import numpy as np

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


def sample_array(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    rng = np.random.default_rng(42)
    if datatype == "BYTES":
        words = [f"w{i}-\u00e9".encode() for i in range(count)]
        return np.array(words, dtype=object).reshape(shape)
    dtype = np.dtype(NUMPY[datatype])
    if dtype == np.bool_:
        return (rng.integers(0, 2, count) == 1).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)
        values[0], values[-1] = info.min, info.max
        return values.reshape(shape)
    values = rng.standard_normal(count).astype(dtype)
    values[0] = np.finfo(dtype).max
    return values.reshape(shape)

"""numpy twin of csrc/batching.pyx (the reference): gather request tensors into one batch buffer."""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


def gather(arrays: list[Array], out: Array) -> Array:
    """Copy the arrays' rows one after another into `out` (C-contiguous, same dtype, rows summing to
    out's first dim, the same trailing dims); return `out`."""
    if not out.flags.c_contiguous:
        raise ValueError("gather: the output buffer must be C-contiguous")
    if any(array.dtype != out.dtype for array in arrays) or out.dtype == object:
        raise ValueError("gather: arrays must share the output's (non-object) dtype")
    if any(array.shape[1:] != out.shape[1:] for array in arrays):
        raise ValueError("gather: arrays must have the output's trailing dims")
    if sum(array.shape[0] for array in arrays) != out.shape[0]:
        raise ValueError("gather: the arrays' rows do not add up to the output's")
    return np.concatenate(arrays, axis=0, out=out)

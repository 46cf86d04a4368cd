"""Merge request tensors into one batch and split outputs back. Pure and sync: no asyncio."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from runtime.types import Array


def stack(requests: Sequence[dict[str, Array]]) -> dict[str, Array]:
    """One contiguous array per input, the requests' rows one after another (one copy)."""
    if len(requests) == 1:
        return requests[0]
    return {name: np.concatenate([request[name] for request in requests], axis=0) for name in requests[0]}


def split(outputs: dict[str, Array], row_counts: Sequence[int]) -> list[dict[str, Array]]:
    """Each request's rows of every output, as views into the batch outputs (no copy)."""
    if len(row_counts) == 1:
        return [outputs]
    total = sum(row_counts)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output {name!r} has shape {list(array.shape)}; expected {total} rows, one per batched input row"
            )
    bounds = np.cumsum([0, *row_counts])
    return [
        {name: array[start:stop] for name, array in outputs.items()}
        for start, stop in zip(bounds[:-1], bounds[1:])
    ]

"""Ragged batches by padding: requests whose variable dims differ share one batch, each input padded
to the largest request's extent, and each caller gets back only its own extent of the outputs.

Opt-in per model with the config parameter `ragged_padding: "true"` (README, "Ragged batches by
padding", says when that is safe). Pure and sync, like collate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np

from runtime.batching.collate import gather_rows
from runtime.errors import ModelLoadError
from runtime.types import Array

if TYPE_CHECKING:
    from runtime.spec import VersionSpec

PARAMETER = "ragged_padding"


@dataclass(frozen=True, slots=True)
class RaggedPlan:
    # Non-batch axes (0 = the first dim after the batch dim) whose size may differ between requests.
    input_axes: dict[str, tuple[int, ...]]
    # For each output, its variable axes and the input whose size on that axis gives a request's extent.
    output_axes: dict[str, tuple[tuple[int, str], ...]]


def ragged_plan(config: VersionSpec, where: str) -> RaggedPlan | None:
    """The padding plan the config asks for, or None; a load error when it cannot be done safely."""
    flattened = [tensor.name for tensor in config.inputs if tensor.allow_ragged_batch]
    if flattened:
        raise ModelLoadError(
            f"{where}: allow_ragged_batch on {flattened}: Triton's ragged batching (inputs flattened, "
            f'shapes passed by batch_input) is not supported; parameters {{ key: "{PARAMETER}" value: '
            '{ string_value: "true" } } batches ragged requests by padding instead'
        )
    parameter = config.parameters.get(PARAMETER)
    if parameter is None or parameter.strip().lower() in ("", "false", "0", "no"):
        return None
    if parameter.strip().lower() not in ("true", "1", "yes"):
        raise ModelLoadError(f"{where}: parameter {PARAMETER} must be true or false, got {parameter!r}")
    if config.max_batch_size <= 0:
        raise ModelLoadError(f"{where}: {PARAMETER} needs a batch dimension (max_batch_size > 0)")
    input_axes = {
        tensor.name: tuple(axis for axis, dim in enumerate(tensor.dims) if dim < 0) for tensor in config.inputs
    }
    if not any(input_axes.values()):
        raise ModelLoadError(f"{where}: {PARAMETER} is set but no input has a variable (-1) dim to pad")
    output_axes: dict[str, tuple[tuple[int, str], ...]] = {}
    for tensor in config.outputs:
        cuts: list[tuple[int, str]] = []
        for axis, dim in enumerate(tensor.dims):
            if dim >= 0:
                continue
            source = next((name for name, axes in input_axes.items() if axis in axes), None)
            if source is None:
                raise ModelLoadError(
                    f"{where}: output {tensor.name!r} has a variable dim at position {axis + 1} that no input "
                    f"varies at; {PARAMETER} cannot tell how much of it belongs to each request"
                )
            cuts.append((axis, source))
        output_axes[tensor.name] = tuple(cuts)
    return RaggedPlan({name: axes for name, axes in input_axes.items() if axes}, output_axes)


def group_key(inputs: dict[str, Array], plan: RaggedPlan) -> Hashable:
    """Requests that differ only in padded axes share a batch: those axes leave the key."""
    key: list[tuple[int, ...]] = []
    for name, array in inputs.items():
        axes = plan.input_axes.get(name, ())
        key.append(tuple(-1 if axis in axes else size for axis, size in enumerate(array.shape[1:])))
    return tuple(key)


def pad_stack(requests: Sequence[dict[str, Array]], plan: RaggedPlan) -> dict[str, Array]:
    """One array per input, every request's rows padded with zeros (empty strings for BYTES) to the
    largest extent in the batch; inputs whose shapes agree are stacked as collate.stack does. One copy."""
    batch: dict[str, Array] = {}
    for name in requests[0]:
        arrays = [request[name] for request in requests]
        if name not in plan.input_axes or len({a.shape[1:] for a in arrays}) == 1:
            batch[name] = gather_rows(arrays) if len(arrays) > 1 else arrays[0]
            continue
        extent = tuple(max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays)))
        rows = sum(a.shape[0] for a in arrays)
        dtype = arrays[0].dtype
        padded = np.full((rows, *extent), "", dtype=object) if dtype == object else np.zeros((rows, *extent), dtype)
        row = 0
        for array in arrays:
            padded[(slice(row, row + array.shape[0]), *(slice(0, size) for size in array.shape[1:]))] = array
            row += array.shape[0]
        batch[name] = padded
    return batch


def cut(outputs: dict[str, Array], inputs: dict[str, Array], plan: RaggedPlan) -> dict[str, Array]:
    """One request's outputs (already its own rows) cut to its own extent on each padded axis (views)."""
    result: dict[str, Array] = {}
    for name, array in outputs.items():
        cuts = plan.output_axes.get(name, ())
        if not cuts:
            result[name] = array
            continue
        index: list[slice] = [slice(None)] * array.ndim
        for axis, source in cuts:
            index[axis + 1] = slice(0, inputs[source].shape[axis + 1])
        result[name] = array[tuple(index)]
    return result

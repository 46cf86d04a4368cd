"""What the sequence batcher feeds a model besides the client's inputs: control values and implicit state.

Built once per version where they can be (the false/true rows of every flag control, every initial
state), so a batch only picks ready-made one-row arrays and stacks them with the request's inputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import InvalidInput, quoted
from runtime.paths import inside
from runtime.sequence.request import SequenceTag
from runtime.spec import SequenceBatchingConfig, SequenceControl, SequenceState
from runtime.tensors import array_from_file
from runtime.types import DATATYPE_TO_NUMPY, Array

INITIAL_STATE_DIR = "initial_state"  # Triton's: data files live under <model>/initial_state/


class Feeds:
    """The control and initial-state rows of one version. `lead` is (1,) when the model batches, else ()."""

    def __init__(self, label: str, config: SequenceBatchingConfig, batched: bool, model_dir: Path) -> None:
        self.label = label
        self.lead: tuple[int, ...] = (1,) if batched else ()
        self._flags: list[tuple[SequenceControl, Array, Array]] = []
        self._corrid: list[SequenceControl] = []
        for control in config.controls:
            if control.kind == "CORRID":
                self._corrid.append(control)
                continue
            dtype = DATATYPE_TO_NUMPY[control.datatype]
            false, true = (np.full(self.lead + control.row_shape, value, dtype=dtype) for value in control.false_true)
            false.flags.writeable = true.flags.writeable = False  # shared by every batch
            self._flags.append((control, false, true))
        self.states = config.states
        self.state_outputs = tuple(state.output_name for state in config.states)
        self.initial: dict[str, Array] = {
            state.input_name: self._initial_state(state, model_dir) for state in config.states
        }
        # Whether a state may change shape: then its shape is part of what rows must share to stack.
        self.variable_state = any(-1 in state.dims for state in config.states)

    def controls(self, tag: SequenceTag, first: bool) -> dict[str, Array]:
        """The control rows of one request: START for the first request a sequence executes, END for the
        request that carries the end flag, READY always (only ready requests are batched)."""
        rows: dict[str, Array] = {}
        for control, false, true in self._flags:
            if control.kind == "START":
                on = first
            elif control.kind == "END":
                on = tag.end
            else:
                on = True
            rows[control.input_name] = true if on else false
        for control in self._corrid:
            rows[control.input_name] = self._corrid_row(control, tag)
        return rows

    def _corrid_row(self, control: SequenceControl, tag: SequenceTag) -> Array:
        shape = self.lead + control.row_shape
        if control.datatype == "BYTES":
            row = np.empty(shape, dtype=object)
            row.fill(str(tag.key))  # ONNX Runtime string tensors take str
            return row
        if isinstance(tag.key, str):
            raise InvalidInput(
                f"{self.label}: {tag.describe()} is a string, but CONTROL_SEQUENCE_CORRID "
                f"{quoted(control.input_name)} is {control.datatype}; send a numeric sequence_id"
            )
        dtype = DATATYPE_TO_NUMPY[control.datatype]
        bits = dtype.itemsize * 8
        # Triton's rule: a 32-bit CORRID gets the id's low-order 32 bits.
        value = tag.key & ((1 << bits) - 1)
        if dtype.kind == "i" and value >= 1 << (bits - 1):
            value -= 1 << bits
        return np.full(shape, value, dtype=dtype)

    def _initial_state(self, state: SequenceState, model_dir: Path) -> Array:
        dtype = DATATYPE_TO_NUMPY[state.datatype]
        shape = self.lead + state.initial_dims
        if not state.initial_file:
            row = np.full(shape, "", dtype=object) if dtype == object else np.zeros(shape, dtype=dtype)
        else:
            row = _read_initial(self.label, model_dir, state, dtype).reshape(shape).copy()
        row.flags.writeable = False  # every new sequence starts from this one array
        return row


def _read_initial(label: str, model_dir: Path, state: SequenceState, dtype: np.dtype[Any]) -> Array:
    """`<model>/initial_state/<data_file>`: inside the model's directory, exactly the bytes the dims need."""
    what = f"{label}: sequence_batching state {quoted(state.input_name)}: initial_state data_file"
    folder = inside(model_dir, INITIAL_STATE_DIR, what)
    path = inside(folder, state.initial_file, what, "model's initial_state directory")
    return array_from_file(path, dtype, state.initial_dims, what, state.initial_file, "model's initial_state directory")

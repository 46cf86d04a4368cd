"""A version's completed config as plain values: what the model, batching and processing read.

repository/model_config.py makes these from the config protobuf (version_spec) and is the one
module that knows the protobuf; everything below it takes these instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runtime.types import TensorSpec


@dataclass(frozen=True, slots=True)
class TensorConfig:
    """One input or output of a completed config, without the batch dim."""

    name: str
    datatype: str  # V2 name, e.g. "FP32"
    dims: tuple[int, ...]  # -1 where variable
    reshape: tuple[int, ...] | None = None  # the shape the model itself takes (inputs) or gives (outputs)
    optional: bool = False
    label_filename: str = ""
    allow_ragged_batch: bool = False


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy (0: not set)."""

    max_queue_size: int = 0
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    delay_on_timeout: bool = False  # timeout_action DELAY (else REJECT)


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """Triton's dynamic_batching block."""

    max_queue_delay_us: int = 0
    preferred_batch_size: tuple[int, ...] = ()
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = QueuePolicy()
    priority_queue_policy: dict[int, QueuePolicy] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One step of Triton's ensemble_scheduling: which model runs, and which ensemble tensors it reads
    and writes. `input_map`: composing model input -> ensemble tensor; `output_map`: composing model
    output -> ensemble tensor (Triton's direction for both)."""

    model_name: str
    model_version: int  # -1: the version the model routes to
    input_map: dict[str, str]
    output_map: dict[str, str]


@dataclass(frozen=True, slots=True)
class SequenceControl:
    """One control input of Triton's sequence_batching: the server fills `input_name` per row.
    kind: "START", "END", "READY" (with `false_true`, the values for false and true) or "CORRID"
    (the sequence's id); `row_shape`: the tensor's shape per row, every extent 1."""

    kind: str
    input_name: str
    datatype: str  # V2 name
    row_shape: tuple[int, ...]
    false_true: tuple[float, float] = (0, 1)


@dataclass(frozen=True, slots=True)
class SequenceState:
    """One implicit state of Triton's sequence_batching: `output_name` of one request of a sequence is
    fed as `input_name` to its next; a sequence starts from zeros or from `initial_file` (a path
    inside the model directory, already checked), of `initial_dims`."""

    input_name: str
    output_name: str
    datatype: str  # V2 name
    dims: tuple[int, ...]  # without the batch dim; -1 where the state may change size
    initial_dims: tuple[int, ...]
    initial_file: str = ""  # relative to the model directory; "" for zeros


@dataclass(frozen=True, slots=True)
class SequenceBatchingConfig:
    """Triton's sequence_batching block. `strategy` "direct": each sequence holds one batch slot of one
    instance; "oldest": batches of the oldest requests across up to max_candidate_sequences."""

    strategy: str
    max_sequence_idle_us: int  # 0 in the config means Triton's default, 1 s; resolved here
    controls: tuple[SequenceControl, ...] = ()
    states: tuple[SequenceState, ...] = ()
    max_queue_delay_us: int = 0
    minimum_slot_utilization: float = 0.0  # direct
    max_candidate_sequences: int = 0  # oldest; 0: max_batch_size (at least 1)
    preferred_batch_size: tuple[int, ...] = ()  # oldest


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """A version's completed config as plain values: what the core reads. `message` is the completed
    ModelConfig serialized, for the model-configuration extension (config_message)."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    dynamic_batching: BatchingConfig | None
    parameters: dict[str, str]  # string_value of each config parameter
    response_cache: bool = False  # Triton's response_cache { enable: true } (runtime/cache.py)
    message: bytes = field(repr=False, default=b"")
    sequence_batching: SequenceBatchingConfig | None = None  # Triton's sequence batcher, when configured
    ensemble_steps: tuple[EnsembleStep, ...] = ()  # platform "ensemble": the DAG; empty for other models


def public_inputs(spec: VersionSpec) -> list[TensorSpec]:
    return [_public(t, spec.max_batch_size) for t in spec.inputs]


def public_outputs(spec: VersionSpec) -> list[TensorSpec]:
    return [_public(t, spec.max_batch_size) for t in spec.outputs]


def _public(tensor: TensorConfig, max_batch_size: int) -> TensorSpec:
    batch = (-1,) if max_batch_size > 0 else ()
    return TensorSpec(tensor.name, tensor.datatype, batch + tensor.dims)

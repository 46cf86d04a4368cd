"""config.pbtxt -> our ModelConfig message; completion and checks against the ONNX graph; the
completed message as plain frozen values (VersionSpec) for the core.

The config schema is Triton's (field names and numbers), restricted to what this runtime
implements. A field we do not implement is a load error that names it, never silently ignored.
This module (with limits.py, which checks the message's ranges) is the only importer of the generated
config protobuf: the model, batching, processing and the engine take a VersionSpec; the message itself
comes back only where the public config is served (VersionSpec.config_message, public_config_message).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import json_format, text_format

from runtime.errors import ModelLoadError, quoted
from runtime.repository import limits
from runtime.paths import inside
from runtime._pb import model_config_pb2 as mc
from runtime.spec import BatchingConfig, EnsembleStep, QueuePolicy, TensorConfig, VersionSpec
from runtime.spec import SequenceBatchingConfig, SequenceControl, SequenceState
from runtime.types import CONFIG_TO_DATATYPE, DATATYPE_TO_CONFIG, TensorSpec

ModelConfig = mc.ModelConfig
SUPPORTED_PLATFORMS = ("", "onnxruntime_onnx")
SUPPORTED_BACKENDS = ("", "onnxruntime")
DEFAULT_MODEL_FILENAME = "model.onnx"
ENSEMBLE_PLATFORM = "ensemble"  # Triton's: a DAG over other models, its version directories empty

_ONNX_TO_DATATYPE: dict[int, str] = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
    onnx.TensorProto.BFLOAT16: "BF16",
}


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """An ONNX graph input or output: V2 datatype and full shape (-1 where symbolic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GraphSignature:
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]


def config_message(spec: VersionSpec) -> mc.ModelConfig:
    """The completed config as the protocol serves it (a new message each call)."""
    return mc.ModelConfig.FromString(spec.message)


def version_spec(config: mc.ModelConfig) -> VersionSpec:
    """The plain values of a (completed) config."""
    batching = None
    if config.HasField("dynamic_batching"):
        block = config.dynamic_batching
        batching = BatchingConfig(
            max_queue_delay_us=int(block.max_queue_delay_microseconds),
            preferred_batch_size=tuple(int(s) for s in block.preferred_batch_size),
            priority_levels=int(block.priority_levels),
            default_priority_level=int(block.default_priority_level),
            default_queue_policy=_queue_policy(block.default_queue_policy),
            priority_queue_policy={int(n): _queue_policy(p) for n, p in block.priority_queue_policy.items()},
        )
    return VersionSpec(
        name=config.name,
        platform=config.platform,
        max_batch_size=int(config.max_batch_size),
        inputs=tuple(_tensor_config(t) for t in config.input),
        outputs=tuple(_tensor_config(t) for t in config.output),
        dynamic_batching=batching,
        parameters={key: value.string_value for key, value in config.parameters.items()},
        response_cache=config.response_cache.enable,
        message=config.SerializeToString(deterministic=True),
        sequence_batching=_sequence_batching(config),
        ensemble_steps=tuple(
            EnsembleStep(step.model_name, int(step.model_version), dict(step.input_map), dict(step.output_map))
            for step in config.ensemble_scheduling.step
        ),
    )


DEFAULT_SEQUENCE_IDLE_US = 1_000_000  # Triton's default max_sequence_idle_microseconds
_CONTROL_KINDS = {
    mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START: "START",
    mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END: "END",
    mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_READY: "READY",
    mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_CORRID: "CORRID",
}
# The false/true lists each flag control may use, with the tensor datatype each one means.
_FLAG_LISTS = (("int32_false_true", "INT32"), ("fp32_false_true", "FP32"), ("bool_false_true", "BOOL"))
_CORRID_DATATYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")


def _sequence_batching(config: mc.ModelConfig) -> SequenceBatchingConfig | None:
    """The sequence_batching block as plain values (checked by complete_config)."""
    if not config.HasField("sequence_batching"):
        return None
    block = config.sequence_batching
    controls = []
    for control_input in block.control_input:
        for control in control_input.control:
            kind = _CONTROL_KINDS[control.kind]
            if kind == "CORRID":
                controls.append(SequenceControl(kind, control_input.name, _datatype(control.data_type), (1,)))
                continue
            listed, datatype = next((getattr(control, name), dt) for name, dt in _FLAG_LISTS if len(getattr(control, name)))
            false_true = (float(listed[0]), float(listed[1]))
            controls.append(SequenceControl(kind, control_input.name, datatype, (1,), false_true))
    states = []
    for state in block.state:
        initial = state.initial_state[0] if state.initial_state else None
        states.append(
            SequenceState(
                input_name=state.input_name,
                output_name=state.output_name,
                datatype=_datatype(state.data_type),
                dims=tuple(int(d) for d in state.dims),
                initial_dims=tuple(int(d) for d in initial.dims) if initial is not None else tuple(int(d) for d in state.dims),
                initial_file=initial.data_file if initial is not None and initial.WhichOneof("state_data") == "data_file" else "",
            )
        )
    strategy = block.WhichOneof("strategy_choice") or "direct"  # Triton's default
    return SequenceBatchingConfig(
        strategy=strategy,
        max_sequence_idle_us=int(block.max_sequence_idle_microseconds) or DEFAULT_SEQUENCE_IDLE_US,
        controls=tuple(controls),
        states=tuple(states),
        max_queue_delay_us=int(
            block.oldest.max_queue_delay_microseconds if strategy == "oldest" else block.direct.max_queue_delay_microseconds
        ),
        minimum_slot_utilization=float(block.direct.minimum_slot_utilization),
        max_candidate_sequences=int(block.oldest.max_candidate_sequences),
        preferred_batch_size=tuple(sorted(int(s) for s in block.oldest.preferred_batch_size)),
    )


def _datatype(data_type: int) -> str:
    return CONFIG_TO_DATATYPE.get(mc.DataType.Name(data_type), "")


def _queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=int(policy.max_queue_size),
        default_timeout_us=int(policy.default_timeout_microseconds),
        allow_timeout_override=bool(policy.allow_timeout_override),
        delay_on_timeout=policy.timeout_action == mc.ModelQueuePolicy.DELAY,
    )


def _tensor_config(tensor: Any) -> TensorConfig:
    reshape = tuple(int(d) for d in tensor.reshape.shape) if tensor.HasField("reshape") else None
    return TensorConfig(
        name=tensor.name,
        datatype=CONFIG_TO_DATATYPE.get(mc.DataType.Name(tensor.data_type), ""),
        dims=tuple(int(d) for d in tensor.dims),
        reshape=reshape,
        optional=bool(getattr(tensor, "optional", False)),
        label_filename=getattr(tensor, "label_filename", ""),
        allow_ragged_batch=bool(getattr(tensor, "allow_ragged_batch", False)),
    )


def public_config_message(spec: VersionSpec, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> mc.ModelConfig:
    """The served config with other public tensors (a processing model's) in place of the model's own;
    an output keeps its label_filename. `inputs` and `outputs` have the batch dim when the model batches."""
    public = config_message(spec)
    batched = spec.max_batch_size > 0
    labels = {t.name: t.label_filename for t in spec.outputs if t.label_filename}
    del public.input[:]
    del public.output[:]
    for tensor in inputs:
        model_input = public.input.add()
        model_input.name = tensor.name
        model_input.data_type = mc.DataType.Value(DATATYPE_TO_CONFIG[tensor.datatype])  # type: ignore[assignment]
        model_input.dims.extend(tensor.shape[1:] if batched else tensor.shape)
    for tensor in outputs:
        model_output = public.output.add()
        model_output.name = tensor.name
        model_output.data_type = mc.DataType.Value(DATATYPE_TO_CONFIG[tensor.datatype])  # type: ignore[assignment]
        model_output.dims.extend(tensor.shape[1:] if batched else tensor.shape)
        if tensor.name in labels:
            model_output.label_filename = labels[tensor.name]
    return public


def parse_config_text(text: str, source: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        detail = str(exc)
        if "has no field named" in detail:
            detail += " (not a field model-runtime supports; remove it or check its spelling)"
        raise ModelLoadError(f"{source}: {detail}") from None
    return config


def read_config_file(model_dir: Path) -> mc.ModelConfig:
    path = model_dir / "config.pbtxt"
    if not path.is_file():
        return mc.ModelConfig()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from None
    return parse_config_text(text, str(path))


def config_from_json(obj: Any, source: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        json_format.ParseDict(obj, config)
    except json_format.ParseError as exc:
        raise ModelLoadError(f"{source}: {exc}") from None
    return config


def read_graph_signature(model_path: Path, version_dir: Path | None = None, where: str = "") -> GraphSignature:
    """The graph's inputs and outputs. With `version_dir`, also refuses external data (weights in other
    files, which ONNX Runtime reads by the name the model file gives) that lies outside it."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise ModelLoadError(f"{model_path}: not a readable ONNX model: {exc}") from None
    graph = model.graph
    if version_dir is not None:
        _check_external_data(graph, model_path, version_dir, where or model_path.name)
    initializers = {init.name for init in graph.initializer}
    inputs = tuple(_graph_tensor(v, model_path) for v in graph.input if v.name not in initializers)
    outputs = tuple(_graph_tensor(v, model_path) for v in graph.output)
    return GraphSignature(inputs, outputs)


def _check_external_data(graph: onnx.GraphProto, model_path: Path, version_dir: Path, where: str) -> None:
    # ONNX Runtime reads a location relative to the model file's own folder.
    folder = Path(os.path.realpath(model_path)).parent.relative_to(os.path.realpath(version_dir)).as_posix()
    for tensor in _graph_tensors(graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        what = f"{where}: initializer {quoted(tensor.name)}: external data location"
        relative = location if folder == "." or location.startswith("/") else f"{folder}/{location}"
        inside(version_dir, relative, what)


def _graph_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Every tensor a graph holds: initializers, sparse ones, node attributes, and those of subgraphs."""
    found = [*graph.initializer]
    for sparse in graph.sparse_initializer:
        found += [sparse.values, sparse.indices]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                found.append(attribute.t)
            found += list(attribute.tensors)
            if attribute.HasField("g"):
                found += _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                found += _graph_tensors(subgraph)
    return found


def _graph_tensor(value: onnx.ValueInfoProto, model_path: Path) -> GraphTensor:
    tensor_type = value.type.tensor_type
    datatype = _ONNX_TO_DATATYPE.get(tensor_type.elem_type)
    if datatype is None:
        raise ModelLoadError(
            f"{model_path}: tensor {value.name!r} has ONNX element type {tensor_type.elem_type}, "
            "which model-runtime cannot serve"
        )
    if not tensor_type.HasField("shape"):
        return GraphTensor(value.name, datatype, (-1,))
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim)
    return GraphTensor(value.name, datatype, dims)


def complete_config(
    config: mc.ModelConfig,
    model_name: str,
    signature: GraphSignature,
    default_max_batch_size: int,
    auto_complete: bool = True,
) -> mc.ModelConfig:
    """Fill what config.pbtxt left out from the ONNX graph (Triton's auto-complete), then check both agree."""
    done = mc.ModelConfig()
    done.CopyFrom(config)
    where = f"model {model_name!r}"
    if done.name and done.name != model_name:
        raise ModelLoadError(f"{where}: config.pbtxt names the model {done.name!r}; it must match its directory")
    done.name = model_name
    if done.platform not in SUPPORTED_PLATFORMS:
        raise ModelLoadError(f"{where}: platform {done.platform!r} is not supported (only onnxruntime_onnx)")
    if done.backend not in SUPPORTED_BACKENDS:
        raise ModelLoadError(f"{where}: backend {done.backend!r} is not supported (only onnxruntime)")
    if not auto_complete and (not done.input or not done.output):
        raise ModelLoadError(f"{where}: config.pbtxt must list every input and output (auto-complete is disabled)")
    done.platform = "onnxruntime_onnx"
    done.backend = "onnxruntime"
    limits.check(done, where)

    graph_batchable = _graph_has_batch_dim(signature)
    if not config.input and not config.output and config.max_batch_size == 0 and auto_complete:
        if graph_batchable and default_max_batch_size > 0:
            done.max_batch_size = default_max_batch_size
            if done.WhichOneof("scheduling_choice") is None and default_max_batch_size > 1:
                done.dynamic_batching.SetInParent()
    if done.max_batch_size > 0 and not graph_batchable:
        raise ModelLoadError(
            f"{where}: max_batch_size is {done.max_batch_size} but not every ONNX input and output has a "
            "variable first dimension to batch along; set max_batch_size: 0"
        )
    skip = 1 if done.max_batch_size > 0 else 0

    # Control and state tensors are the sequence batcher's, never the client's: not completed into input/output.
    fed, kept = _check_sequence_batching(done, signature, skip, where)
    _complete_tensors(done.input, tuple(t for t in signature.inputs if t.name not in fed), skip, where, "input", auto_complete)
    _complete_tensors(done.output, tuple(t for t in signature.outputs if t.name not in kept), skip, where, "output", auto_complete)
    _check_groups(done, where)
    limits.check(done, where)  # again: completion filled dims and max_batch_size from the graph
    return done


def is_ensemble(config: mc.ModelConfig) -> bool:
    return config.platform == ENSEMBLE_PLATFORM or config.HasField("ensemble_scheduling")


def complete_ensemble_config(config: mc.ModelConfig, model_name: str) -> mc.ModelConfig:
    """An ensemble's config as Triton takes it: nothing to auto-complete from (there is no model file),
    so every input and output is declared with its data_type and dims, and there is at least one step.
    How the steps fit the models they name is checked when it loads (runtime/ensemble)."""
    done = mc.ModelConfig()
    done.CopyFrom(config)
    where = f"model {model_name!r}"
    if done.name and done.name != model_name:
        raise ModelLoadError(f"{where}: config.pbtxt names the model {done.name!r}; it must match its directory")
    done.name = model_name
    if done.platform != ENSEMBLE_PLATFORM:
        raise ModelLoadError(f"{where}: ensemble_scheduling needs platform {ENSEMBLE_PLATFORM!r}, not {done.platform!r}")
    if done.backend:
        raise ModelLoadError(f"{where}: an ensemble has no backend; remove backend {done.backend!r}")
    if not done.ensemble_scheduling.step:
        raise ModelLoadError(f"{where}: platform 'ensemble' needs ensemble_scheduling with at least one step")
    for field in ("instance_group", "model_warmup"):
        if getattr(done, field):
            raise ModelLoadError(f"{where}: an ensemble runs no instances of its own; remove {field}")
    if done.HasField("optimization"):
        raise ModelLoadError(f"{where}: an ensemble runs no session of its own; remove optimization")
    for index, step in enumerate(done.ensemble_scheduling.step):
        if step.model_namespace:
            raise ModelLoadError(f"{where}: step {index}: model_namespace is not supported (one namespace)")
    if not done.input or not done.output:
        raise ModelLoadError(f"{where}: an ensemble's config must list every input and output (there is no model file to complete them from)")
    for kind, tensors in (("input", done.input), ("output", done.output)):
        for tensor in tensors:
            if tensor.data_type == mc.TYPE_INVALID:
                raise ModelLoadError(f"{where}: ensemble {kind} {quoted(tensor.name)} needs a data_type")
    limits.check(done, where)
    return done


def _check_sequence_batching(
    config: mc.ModelConfig, signature: GraphSignature, skip: int, where: str
) -> tuple[set[str], set[str]]:
    """Refuse a sequence_batching block that does not fit the graph; the graph inputs it feeds
    (controls, states) and the graph outputs it keeps (states). Ranges are limits.check's."""
    if not config.HasField("sequence_batching"):
        return set(), set()
    block = config.sequence_batching
    label = f"{where}: sequence_batching"
    if block.iterative_sequence:
        raise ModelLoadError(f"{label}.iterative_sequence is not supported")
    graph_inputs = {t.name: t for t in signature.inputs}
    graph_outputs = {t.name: t for t in signature.outputs}
    declared_inputs = {t.name for t in config.input}
    declared_outputs = {t.name for t in config.output}
    fed: set[str] = set()
    kept: set[str] = set()

    def graph_tensor(name: str, what: str, table: dict[str, GraphTensor], declared: set[str], kind: str) -> GraphTensor:
        found = table.get(name)
        if found is None:
            raise ModelLoadError(
                f"{what}: {quoted(name)} is not an {kind} of the ONNX model (it has {', '.join(sorted(table)) or 'none'})"
            )
        if name in declared:
            raise ModelLoadError(
                f"{what}: {quoted(name)} is fed by the sequence batcher, not by clients; do not list it under {kind}"
            )
        if name in (fed if kind == "input" else kept):
            raise ModelLoadError(f"{what}: {quoted(name)} is used twice by sequence_batching")
        return found

    kinds: set[str] = set()
    for i, control_input in enumerate(block.control_input):
        what = f"{label}.control_input[{i}]"
        tensor = graph_tensor(control_input.name, what, graph_inputs, declared_inputs, "input")
        fed.add(control_input.name)
        if len(control_input.control) != 1:
            raise ModelLoadError(f"{what}: {quoted(control_input.name)} needs exactly one control, has {len(control_input.control)}")
        control = control_input.control[0]
        kind = _CONTROL_KINDS[control.kind]
        if kind in kinds:
            raise ModelLoadError(f"{what}: a second CONTROL_SEQUENCE_{kind}; each kind feeds one input")
        kinds.add(kind)
        lists = [(name, datatype) for name, datatype in _FLAG_LISTS if len(getattr(control, name))]
        if kind == "CORRID":
            datatype = _datatype(control.data_type)
            if lists:
                raise ModelLoadError(f"{what}: CONTROL_SEQUENCE_CORRID takes a data_type, not {lists[0][0]}")
            if datatype not in _CORRID_DATATYPES:
                allowed = ", ".join(DATATYPE_TO_CONFIG[d] for d in _CORRID_DATATYPES)
                raise ModelLoadError(f"{what}: CONTROL_SEQUENCE_CORRID needs data_type one of {allowed}")
        else:
            if len(lists) != 1 or len(getattr(control, lists[0][0])) != 2:
                raise ModelLoadError(
                    f"{what}: CONTROL_SEQUENCE_{kind} needs exactly one of int32_false_true, fp32_false_true "
                    "or bool_false_true, with two values (false, then true)"
                )
            datatype = lists[0][1]
            if control.data_type != mc.TYPE_INVALID and _datatype(control.data_type) != datatype:
                raise ModelLoadError(f"{what}: data_type {mc.DataType.Name(control.data_type)} does not match {lists[0][0]}")
        if tensor.datatype != datatype:
            raise ModelLoadError(
                f"{what}: {quoted(control_input.name)} is {DATATYPE_TO_CONFIG[tensor.datatype]} in the ONNX model, "
                f"but the control gives {DATATYPE_TO_CONFIG[datatype]}"
            )
        if not _dims_compatible((1,), tensor.shape[skip:]):
            raise ModelLoadError(
                f"{what}: {quoted(control_input.name)} has shape {list(tensor.shape)} in the ONNX model; a control "
                f"takes one value per request, shape {'[batch, 1]' if skip else '[1]'}"
            )
    for j, state in enumerate(block.state):
        what = f"{label}.state[{j}]"
        state_in = graph_tensor(state.input_name, what, graph_inputs, declared_inputs, "input")
        fed.add(state.input_name)
        state_out = graph_tensor(state.output_name, what, graph_outputs, declared_outputs, "output")
        kept.add(state.output_name)
        datatype = _datatype(state.data_type)
        if not datatype or datatype == "BF16":
            raise ModelLoadError(f"{what}: needs a data_type model-runtime serves, got {mc.DataType.Name(state.data_type)}")
        dims = tuple(int(d) for d in state.dims)
        if not dims:
            raise ModelLoadError(f"{what}: needs dims (the state's shape without the batch dimension)")
        for tensor in (state_in, state_out):
            if tensor.datatype != datatype:
                raise ModelLoadError(
                    f"{what}: {quoted(tensor.name)} is {DATATYPE_TO_CONFIG[tensor.datatype]} in the ONNX model, "
                    f"but the state's data_type is {mc.DataType.Name(state.data_type)}"
                )
            if not _dims_compatible(dims, tensor.shape[skip:]):
                raise ModelLoadError(
                    f"{what}: dims {list(dims)} do not fit {quoted(tensor.name)}, whose ONNX shape "
                    f"{'without the batch dim ' if skip else ''}is {list(tensor.shape[skip:])}"
                )
        if len(state.initial_state) > 1:
            raise ModelLoadError(f"{what}: at most one initial_state is supported, got {len(state.initial_state)}")
        if state.initial_state:
            initial = state.initial_state[0]
            initial_dims = tuple(int(d) for d in initial.dims)
            if initial.data_type != state.data_type:
                raise ModelLoadError(f"{what}: initial_state data_type must be the state's, {mc.DataType.Name(state.data_type)}")
            if initial.WhichOneof("state_data") is None:
                raise ModelLoadError(f"{what}: initial_state needs zero_data or data_file")
            if any(d < 1 for d in initial_dims) or not _dims_compatible(initial_dims, dims):
                raise ModelLoadError(f"{what}: initial_state dims {list(initial_dims)} must be concrete and fit dims {list(dims)}")
            if initial.WhichOneof("state_data") == "data_file" and datatype == "BYTES":
                raise ModelLoadError(f"{what}: a BYTES initial_state from a data_file is not supported; use zero_data")
        elif any(d < 0 for d in dims):
            raise ModelLoadError(f"{what}: dims {list(dims)} are variable; give an initial_state with concrete dims")
    return fed, kept


def _graph_has_batch_dim(signature: GraphSignature) -> bool:
    tensors = signature.inputs + signature.outputs
    return bool(tensors) and all(len(t.shape) >= 1 and t.shape[0] == -1 for t in tensors)


def _complete_tensors(
    declared: Any, graph: tuple[GraphTensor, ...], skip: int, where: str, kind: str, auto_complete: bool
) -> None:
    by_name = {t.name: t for t in graph}
    declared_names = {t.name for t in declared}
    for tensor in declared:
        graph_tensor = by_name.get(tensor.name)
        if graph_tensor is None:
            raise ModelLoadError(
                f"{where}: config {kind} {tensor.name!r} is not an {kind} of the ONNX model "
                f"(it has {', '.join(sorted(by_name)) or 'none'})"
            )
        type_name = mc.DataType.Name(tensor.data_type)
        if tensor.data_type == mc.TYPE_INVALID:
            tensor.data_type = mc.DataType.Value(DATATYPE_TO_CONFIG[graph_tensor.datatype])
        elif CONFIG_TO_DATATYPE.get(type_name) != graph_tensor.datatype:
            raise ModelLoadError(
                f"{where}: config {kind} {tensor.name!r} has data_type {type_name} but the ONNX model has "
                f"{DATATYPE_TO_CONFIG[graph_tensor.datatype]}"
            )
        model_dims = graph_tensor.shape[skip:]
        if not tensor.dims:
            tensor.dims.extend(model_dims)
        expected = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else tuple(tensor.dims)
        if tensor.HasField("reshape"):
            if _element_count(tensor.dims) is not None and _element_count(expected) is not None:
                if _element_count(tensor.dims) != _element_count(expected):
                    raise ModelLoadError(
                        f"{where}: {kind} {tensor.name!r}: dims {list(tensor.dims)} and reshape {list(expected)} "
                        "hold different element counts"
                    )
        if not _dims_compatible(expected, model_dims):
            raise ModelLoadError(
                f"{where}: config {kind} {tensor.name!r} has dims {list(expected)} but the ONNX model's shape "
                f"{'without the batch dim ' if skip else ''}is {list(model_dims)}"
            )
    if not auto_complete:
        missing = [t.name for t in graph if t.name not in declared_names]
        if missing:
            raise ModelLoadError(f"{where}: config.pbtxt does not list ONNX {kind}s {missing}")
        return
    for graph_tensor in graph:
        if graph_tensor.name in declared_names:
            continue
        added = declared.add()
        added.name = graph_tensor.name
        added.data_type = mc.DataType.Value(DATATYPE_TO_CONFIG[graph_tensor.datatype])
        added.dims.extend(graph_tensor.shape[skip:])


def _element_count(dims: Any) -> int | None:
    count = 1
    for d in dims:
        if d < 0:
            return None
        count *= d
    return count


def _dims_compatible(config_dims: tuple[int, ...], model_dims: tuple[int, ...]) -> bool:
    if len(config_dims) != len(model_dims):
        return False
    return all(c == m or m == -1 for c, m in zip(config_dims, model_dims))


def _check_groups(config: mc.ModelConfig, where: str) -> None:
    """Ranges are limits.check's; this refuses what we do not implement."""
    for group in config.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            raise ModelLoadError(f"{where}: instance_group kind KIND_MODEL is not supported")


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Triton's version_policy: `all`, `specific` (versions) or `latest` (count)."""

    choice: str
    versions: tuple[int, ...] = ()
    count: int = 1


def version_policy(config: mc.ModelConfig) -> VersionPolicy:
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice") or "latest"
    if choice == "specific":
        return VersionPolicy("specific", tuple(sorted({int(v) for v in policy.specific.versions})))
    if choice == "all":
        return VersionPolicy("all")
    return VersionPolicy("latest", count=int(policy.latest.num_versions) or 1)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where and how a version's sessions run, as its config asks: instance groups and optimization."""

    kinds: frozenset[str]  # "gpu" / "cpu" named by the instance groups (KIND_AUTO names none)
    gpus: tuple[int, ...]
    instances: int
    accelerators: tuple[str, ...]  # execution accelerators named (none is supported)
    graph_level: int | None  # optimization.graph.level when set
    parameters: dict[str, str]


_KIND_NAMES = {mc.ModelInstanceGroup.KIND_GPU: "gpu", mc.ModelInstanceGroup.KIND_CPU: "cpu"}


def placement(config: mc.ModelConfig) -> Placement:
    accelerators = config.optimization.execution_accelerators
    return Placement(
        kinds=frozenset(
            _KIND_NAMES.get(group.kind, mc.ModelInstanceGroup.Kind.Name(group.kind))
            for group in config.instance_group
            if group.kind != mc.ModelInstanceGroup.KIND_AUTO
        ),
        gpus=tuple(int(g) for group in config.instance_group for g in group.gpus),
        instances=instance_count(config),
        accelerators=tuple(a.name for a in [*accelerators.gpu_execution_accelerator, *accelerators.cpu_execution_accelerator]),
        graph_level=int(config.optimization.graph.level) if config.optimization.HasField("graph") else None,
        parameters={key: value.string_value for key, value in config.parameters.items()},
    )


def record_instance_groups(config: mc.ModelConfig, device: str) -> None:
    """Make the served config say where instances run, as Triton's auto-complete does."""
    kind = mc.ModelInstanceGroup.KIND_GPU if device == "cuda" else mc.ModelInstanceGroup.KIND_CPU
    if not config.instance_group:
        group = config.instance_group.add()
        group.count = 1
    for group in config.instance_group:
        group.kind = kind
        if not group.count:
            group.count = 1
        if not group.name:
            group.name = f"{config.name}_{mc.ModelInstanceGroup.Kind.Name(kind).lower()}"


@dataclass(frozen=True, slots=True)
class WarmupInput:
    name: str
    datatype: str  # V2 name; "" for a data_type we cannot serve
    config_type: str  # e.g. TYPE_FP32, for messages
    dims: tuple[int, ...]
    source: str  # "input_data_file", "random_data", "zero_data" (the default)
    data_file: str = ""


@dataclass(frozen=True, slots=True)
class Warmup:
    name: str
    batch_size: int
    count: int
    inputs: tuple[WarmupInput, ...]


def warmups(config: mc.ModelConfig) -> list[Warmup]:
    """The model_warmup entries as plain values."""
    found = []
    for warmup in config.model_warmup:
        inputs = []
        for name, spec in warmup.inputs.items():
            config_type = mc.DataType.Name(spec.data_type)
            inputs.append(
                WarmupInput(
                    name=name,
                    datatype=CONFIG_TO_DATATYPE.get(config_type, ""),
                    config_type=config_type,
                    dims=tuple(int(d) for d in spec.dims),
                    source=spec.WhichOneof("input_data_type") or "zero_data",
                    data_file=spec.input_data_file,
                )
            )
        found.append(Warmup(warmup.name, int(warmup.batch_size), int(warmup.count), tuple(inputs)))
    return found


def instance_count(config: mc.ModelConfig) -> int:
    """Total instances over all instance groups; a group without count means one."""
    if not config.instance_group:
        return 1
    return max(1, sum(group.count or 1 for group in config.instance_group))


def config_to_json(config: mc.ModelConfig) -> dict[str, Any]:
    """Triton's JSON form of a config: proto field names, int64 as JSON numbers (not strings)."""
    as_dict = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    converted: dict[str, Any] = _int64_as_numbers(as_dict, config.DESCRIPTOR)
    return converted


_INT64_TYPES = {
    pb_descriptor.FieldDescriptor.TYPE_INT64,
    pb_descriptor.FieldDescriptor.TYPE_UINT64,
    pb_descriptor.FieldDescriptor.TYPE_SINT64,
    pb_descriptor.FieldDescriptor.TYPE_FIXED64,
    pb_descriptor.FieldDescriptor.TYPE_SFIXED64,
}


def _int64_as_numbers(value: Any, message: Any) -> Any:
    """`message`: the message's Descriptor (pure-Python or upb)."""
    for name, item in list(value.items()):
        field = message.fields_by_name.get(name)
        if field is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                value[name] = {k: _int64_as_numbers(v, value_field.message_type) for k, v in item.items()}
        elif field.message_type is not None:
            if isinstance(item, list):
                value[name] = [_int64_as_numbers(v, field.message_type) for v in item]
            else:
                value[name] = _int64_as_numbers(item, field.message_type)
        elif field.type in _INT64_TYPES:
            value[name] = [int(v) for v in item] if isinstance(item, list) else int(item)
    return value

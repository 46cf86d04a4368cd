"""How an ensemble's steps fit the models they name: checked when the ensemble loads, against the
versions serving then.

Each step's model must be loaded; its input_map must name inputs of that model and cover every input
it requires, its output_map outputs of it; the tensor one side produces must have the datatype and a
shape compatible with what the other side takes; and no ensemble may, through the ensembles it uses,
use itself. Every failure is a ModelLoadError naming the step and its model.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtime.ensemble.graph import Graph, Node, step_label
from runtime.errors import ModelLoadError, RuntimeServingError, quoted
from runtime.spec import EnsembleStep, VersionSpec, public_inputs, public_outputs
from runtime.types import TensorSpec


@dataclass(frozen=True, slots=True)
class Composing:
    """What a check reads of the version a step would run on (the registry makes these)."""

    label: str
    max_batch_size: int
    inputs: Sequence[TensorSpec]  # as clients see them (a processing model's public tensors)
    outputs: Sequence[TensorSpec]
    optional_inputs: frozenset[str]
    steps: tuple[EnsembleStep, ...] = ()  # when it is an ensemble itself


# model name, step model_version (<= 0: the version it routes to) -> what serves; raises the
# registry's ModelNotFound or Unavailable when nothing does.
Lookup = Callable[[str, int], Composing]


def check(spec: VersionSpec, graph: Graph, lookup: Lookup) -> None:
    label = graph.label
    _check_no_self_use(spec.name, label, graph, lookup)
    composing = {node.index: _resolve(label, node, lookup) for node in graph.nodes}
    # What produces each ensemble tensor, as (who, its spec, whether it batches): ensemble inputs, then
    # each step's outputs.
    batched = spec.max_batch_size > 0
    produced: dict[str, tuple[str, TensorSpec, bool]] = {t.name: ("ensemble input", t, batched) for t in public_inputs(spec)}
    for node in graph.nodes:
        model = composing[node.index]
        where = f"{label}: {node.label}"
        _check_batching(spec, where, model)
        outputs = _tensors(where, "output", model, model.outputs, node.step.output_map)
        for output, tensor in sorted(node.step.output_map.items()):
            produced[tensor] = (f"output {quoted(output)} of {node.label}", outputs[output], model.max_batch_size > 0)
    for node in graph.nodes:
        model = composing[node.index]
        where = f"{label}: {node.label}"
        inputs = _tensors(where, "input", model, model.inputs, node.step.input_map)
        for model_input, tensor in sorted(node.step.input_map.items()):
            who, source, source_batched = produced[tensor]
            _check_fit(
                f"{where}: input {quoted(model_input)}", (inputs[model_input], model.max_batch_size > 0),
                f"ensemble tensor {quoted(tensor)} ({who})", (source, source_batched),
            )
        missing = sorted(set(inputs) - set(node.step.input_map) - model.optional_inputs)
        if missing:
            raise ModelLoadError(
                f"{where}: input_map leaves out {', '.join(map(quoted, missing))}, which {model.label} requires"
            )
    for ensemble_output in public_outputs(spec):
        who, source, source_batched = produced[ensemble_output.name]
        _check_fit(
            f"{label}: ensemble output {quoted(ensemble_output.name)}", (ensemble_output, batched), who, (source, source_batched)
        )


def _tensors(where: str, kind: str, model: Composing, tensors: Sequence[TensorSpec], mapping: dict[str, str]) -> dict[str, TensorSpec]:
    """The model's inputs or outputs by name; ModelLoadError if the step's map names one it lacks."""
    by_name = {t.name: t for t in tensors}
    for name in sorted(mapping):
        if name not in by_name:
            raise ModelLoadError(
                f"{where}: {kind}_map names {kind} {quoted(name)}, which {model.label} does not have "
                f"(it has {', '.join(sorted(by_name)) or 'none'})"
            )
    return by_name


def _resolve(label: str, node: Node, lookup: Lookup) -> Composing:
    try:
        return lookup(node.step.model_name, node.step.model_version)
    except RuntimeServingError as exc:
        raise ModelLoadError(f"{label}: {node.label}: {exc.message}") from None


def _check_batching(spec: VersionSpec, where: str, model: Composing) -> None:
    # The ensemble's batch goes to the step whole: the step's model must take that many rows.
    if spec.max_batch_size > 0 and model.max_batch_size > 0 and model.max_batch_size < spec.max_batch_size:
        raise ModelLoadError(
            f"{where}: the ensemble's max_batch_size {spec.max_batch_size} is larger than "
            f"{model.label}'s {model.max_batch_size}"
        )


def _check_fit(consumer: str, wanted_side: tuple[TensorSpec, bool], producer: str, given_side: tuple[TensorSpec, bool]) -> None:
    """What a producer writes must suit what a consumer takes (each with whether its model batches):
    the same datatype, and shapes that agree, -1 matching any extent, either without the batch dim or
    with it (a batching model's [d...] fits a non-batching one's [-1, d...]), as Triton checks them."""
    (wanted, wanted_batched), (given, given_batched) = wanted_side, given_side
    if wanted.datatype != given.datatype:
        raise ModelLoadError(
            f"{consumer} takes {wanted.datatype}, but {producer} is {given.datatype}: datatypes of the steps differ"
        )
    wanted_dims = wanted.shape[1:] if wanted_batched else wanted.shape
    given_dims = given.shape[1:] if given_batched else given.shape
    if not (_agree(wanted_dims, given_dims) or _agree(wanted.shape, given.shape)):
        raise ModelLoadError(
            f"{consumer} takes shape {list(wanted.shape)}, but {producer} has shape {list(given.shape)}: "
            "shapes of the steps do not fit"
        )


def _agree(wanted: Sequence[int], given: Sequence[int]) -> bool:
    return len(wanted) == len(given) and all(w == g or w == -1 or g == -1 for w, g in zip(wanted, given))


def _check_no_self_use(name: str, label: str, graph: Graph, lookup: Lookup) -> None:
    """No ensemble reaches itself through the ensembles its steps name (a request would never end)."""
    for node in graph.nodes:
        seen: set[str] = set()
        pending = [(node.step.model_name, node.step.model_version)]
        while pending:
            model_name, version = pending.pop()
            if model_name == name:
                raise ModelLoadError(
                    f"{label}: {node.label} uses the ensemble {quoted(name)} itself"
                    + ("" if node.step.model_name == name else f" (through {quoted(node.step.model_name)})")
                    + ": the steps would form a cycle"
                )
            if model_name in seen:
                continue
            seen.add(model_name)
            try:
                composing = lookup(model_name, version)
            except RuntimeServingError:
                continue  # not loaded: no use of anything through it (and _resolve names the direct ones)
            pending.extend((step.model_name, step.model_version) for step in composing.steps)


__all__ = ["Composing", "Lookup", "check", "load_order", "step_label"]


def load_order(names: Sequence[str], needs: dict[str, set[str]]) -> list[str]:
    """`names` with every ensemble (a key of `needs`: the models its steps name) after the models it
    needs, as Triton loads them; an ensemble whose needs never load (missing, or a cycle) comes last,
    so its load fails naming the step."""
    order = [name for name in names if name not in needs]
    pending = [name for name in names if name in needs]
    while pending:
        ready = [name for name in pending if not needs[name] & set(pending)]
        if not ready:
            return order + pending
        order.extend(ready)
        pending = [name for name in pending if name not in ready]
    return order

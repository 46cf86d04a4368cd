"""Check a decoded request against the model's inputs before it may join a batch: one RequestSchema per
version, built when it loads (runtime.model.ServedModel.schema)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

from runtime.errors import InvalidInput, quoted
from runtime.types import Array, RequestedOutput, TensorSpec, datatype_of


@dataclass(frozen=True, slots=True)
class Validated:
    inputs: dict[str, Array]  # in the model's input order
    rows: int  # batch rows this request contributes (1 for models without a batch dim)
    group: Hashable  # requests merge into one batch only when their groups are equal
    output_names: list[str]
    trace: Any = None  # the request's span while it is traced (runtime/tracing): BatchTiming.traces reports it
    binding: Any = None  # its tensors by pointer from shared memory (runtime.backends.binding.Binding), if any


class RequestSchema:
    """What a version's requests are checked against, computed once when the version loads: inputs by
    name in the model's order (datatype, shape, optional), outputs by name, max_batch_size and the label
    (e.g. "model 'mlp' version 1") every message names."""

    __slots__ = ("label", "inputs", "max_batch_size", "output_names", "_by_name", "_required", "_known_outputs")

    def __init__(
        self,
        label: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        max_batch_size: int,
        optional: frozenset[str] = frozenset(),
    ) -> None:
        self.label = label
        self.inputs: tuple[TensorSpec, ...] = tuple(inputs)
        self.max_batch_size = max_batch_size
        self.output_names: list[str] = [spec.name for spec in outputs]  # the model's order
        self._by_name = {spec.name: spec for spec in self.inputs}
        self._required = tuple(spec.name for spec in self.inputs if spec.name not in optional)
        self._known_outputs = frozenset(self.output_names)

    def validate(self, inputs: dict[str, Array]) -> Validated:
        """The request's inputs in the model's order, its rows and its batch group; InvalidInput otherwise."""
        label = self.label
        by_name = self._by_name
        for name in inputs:
            if name not in by_name:
                raise InvalidInput(
                    f"{label}: unexpected input {quoted(name)}; the model's inputs are {', '.join(by_name)}"
                )
        for name in self._required:
            if name not in inputs:
                raise InvalidInput(f"{label}: missing input {name!r} (expects {', '.join(by_name)})")

        max_batch_size = self.max_batch_size
        ordered: dict[str, Array] = {}
        rows: int | None = None
        group: list[object] = []
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if array is None:
                continue
            actual_type = datatype_of(array)
            if actual_type != spec.datatype:
                raise InvalidInput(
                    f"{label}: input {spec.name!r} has datatype {actual_type}, but the model expects {spec.datatype}"
                )
            shape = tuple(array.shape)
            if not _shape_matches(shape, spec.shape):
                raise InvalidInput(
                    f"{label}: input {spec.name!r} has shape {list(shape)}, but the model expects {_describe(spec.shape)}"
                )
            if max_batch_size > 0:
                batch = shape[0]
                if batch < 1 or batch > max_batch_size:
                    raise InvalidInput(
                        f"{label}: input {spec.name!r} has batch size {batch}; it must be between 1 and "
                        f"max_batch_size {max_batch_size}"
                    )
                if rows is not None and batch != rows:
                    raise InvalidInput(
                        f"{label}: inputs disagree on the batch size ({rows} vs {batch} for {spec.name!r})"
                    )
                rows = batch
                group.append(shape[1:])
            else:
                group.append(shape)
            ordered[spec.name] = array
        return Validated(ordered, rows or 1, tuple(group), self.output_names)

    def select_outputs(self, requested: list[RequestedOutput] | None) -> OutputSelection:
        """The outputs a request asks for, checked against the model's in one walk of the request's list."""
        if not requested:
            return OutputSelection(None, [])
        known = self._known_outputs
        wanted: dict[str, RequestedOutput] = {}
        classified: list[RequestedOutput] = []
        for output in requested:
            if output.name not in known:
                raise InvalidInput(
                    f"{self.label}: unknown output {quoted(output.name)} requested; the model's outputs are "
                    f"{', '.join(self.output_names)}"
                )
            wanted[output.name] = output
            if output.classification:
                classified.append(output)
        return OutputSelection(wanted, classified)


def classification_count(value: object, output: str) -> int:
    """An output's `classification` parameter, the one rule for every transport: a non-negative integer
    (0: an ordinary tensor). Strings (even "3"), booleans, fractions and null are refused, as Triton does
    (HTTP: a JSON unsigned integer; gRPC: an integer parameter)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(
            f"output {quoted(output)}: parameter 'classification' must be a non-negative integer, got {quoted(value)}"
        )
    return value


@dataclass(frozen=True, slots=True)
class OutputSelection:
    """The outputs a request asks for, checked against the model's in one walk of the request's list."""

    wanted: dict[str, RequestedOutput] | None  # in the client's order; None: every output, in the model's
    classified: list[RequestedOutput]  # those asking for Triton's classification extension


def _shape_matches(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return len(shape) == len(expected) and all(e == -1 or s == e for s, e in zip(shape, expected))


def _describe(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("-1" if d == -1 else str(d) for d in shape) + "] (-1: any size)"

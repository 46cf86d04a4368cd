"""A request's sequence parameters: Triton's `sequence_id` (a uint64 or a string), `sequence_start`, `sequence_end`.

tritonclient sends them as request parameters (HTTP JSON `parameters`, gRPC `InferParameter`s, the
same over ModelStreamInfer), and the transports hand them through unchanged in InferRequest.parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from runtime.errors import InvalidInput, quoted

PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
MAX_ID = 2**64 - 1  # Triton's correlation ids are uint64
MAX_STRING_ID = 256  # characters: a string id is a table key and goes into messages


@dataclass(frozen=True, slots=True)
class SequenceTag:
    """Which sequence a request belongs to and whether it starts or ends it. `key` is an int or a str."""

    key: int | str
    start: bool = False
    end: bool = False

    def describe(self) -> str:
        return f"sequence {quoted(self.key)}"


def sequence_tag(parameters: Mapping[str, Any]) -> SequenceTag | None:
    """The request's tag; None when it names no sequence parameter. InvalidInput for a wrong value:
    sequence_id 0 or "" (Triton's "no sequence"), a negative or too large id, a float or bool id, or a
    start or end flag that is not a boolean."""
    if not any(name in parameters for name in PARAMETERS):
        return None
    if "sequence_id" not in parameters:
        raise InvalidInput("parameters sequence_start and sequence_end need a sequence_id (a non-zero uint64 or a non-empty string)")
    key = parameters["sequence_id"]
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise InvalidInput(
            f"parameter 'sequence_id' must be a non-zero uint64 or a non-empty string, got {type(key).__name__} {quoted(key)}"
        )
    if isinstance(key, int) and not 0 < key <= MAX_ID:
        raise InvalidInput(f"parameter 'sequence_id' must be a non-zero uint64 (1 to {MAX_ID}), got {key}")
    if isinstance(key, str) and not 0 < len(key) <= MAX_STRING_ID:
        raise InvalidInput(
            f"parameter 'sequence_id' as a string must have 1 to {MAX_STRING_ID} characters, got {len(key)}"
        )
    flags = []
    for name in ("sequence_start", "sequence_end"):
        value = parameters.get(name, False)
        if not isinstance(value, bool):
            raise InvalidInput(f"parameter {name!r} must be a boolean, got {type(value).__name__} {quoted(value)}")
        flags.append(value)
    return SequenceTag(key, flags[0], flags[1])

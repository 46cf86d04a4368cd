"""What the data path reports as it runs, for metrics and logs; implementations live in runtime.metrics.

The engine reports each finished request and the model each executed batch. Calls happen on the
event loop and must be cheap and never raise.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

from runtime.errors import (
    ExecutionError,
    InvalidInput,
    ModelNotFound,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    RuntimeServingError,
    Unavailable,
)
from runtime.types import Array, InferRequest

if TYPE_CHECKING:
    from runtime.model import ServedModel

# Request outcomes, the `reason` label of failures.
SUCCESS = "success"
OUTCOMES = (
    SUCCESS, "invalid_input", "not_found", "queue_full", "unavailable", "timeout", "cancelled", "execution_error", "internal",
)


def outcome_of(error: BaseException) -> str:
    if isinstance(error, QueueFull):
        return "queue_full"
    if isinstance(error, InvalidInput):
        return "invalid_input"
    if isinstance(error, ModelNotFound):
        return "not_found"
    if isinstance(error, RequestTimeout):
        return "timeout"
    if isinstance(error, (RequestCancelled, asyncio.CancelledError)):
        return "cancelled"
    if isinstance(error, Unavailable):
        return "unavailable"
    if isinstance(error, ExecutionError):
        return "execution_error"
    if isinstance(error, RuntimeServingError):
        return error.code.value
    return "internal"


@dataclass(frozen=True, slots=True)
class BatchTiming:
    rows: int
    queue_seconds: Sequence[float]  # one per request in the batch
    input_seconds: float  # gather inputs into the batch
    infer_seconds: float  # model execution
    output_seconds: float  # split outputs back


class Observer(Protocol):
    def request_started(self, request: InferRequest, model: ServedModel) -> None: ...

    def request_finished(
        self, request: InferRequest, model: ServedModel | None, outcome: str, seconds: float
    ) -> None: ...

    def batch_executed(
        self, model: ServedModel, timing: BatchTiming, inputs: dict[str, Array], outputs: dict[str, Array]
    ) -> None: ...


class NullObserver:
    def request_started(self, request: InferRequest, model: ServedModel) -> None:
        pass

    def request_finished(
        self, request: InferRequest, model: ServedModel | None, outcome: str, seconds: float
    ) -> None:
        pass

    def batch_executed(
        self, model: ServedModel, timing: BatchTiming, inputs: dict[str, Array], outputs: dict[str, Array]
    ) -> None:
        pass

"""What the core needs from an execution backend. Calls are synchronous; the core runs them off the loop."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from runtime.backends.binding import BoundRequest, Placement
from runtime.types import Array


class Backend(Protocol):
    @property
    def providers(self) -> list[str]:
        """Execution providers actually active, most preferred first (e.g. ["CPUExecutionProvider"])."""
        ...

    @property
    def instance_count(self) -> int: ...

    def prepare_input(self, name: str, array: Array) -> Array:
        """Per-request conversion to what the backend executes on (may raise InvalidInput)."""
        ...

    def run(self, instance: int, inputs: dict[str, Array], output_names: list[str]) -> dict[str, Array]:
        """Execute one batch on one instance; thread-safe across distinct instances."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BindingBackend(Backend, Protocol):
    """A backend that also runs batches whose tensors come by pointer (runtime/backends/binding.py)."""

    @property
    def binds_pointers(self) -> bool: ...

    @property
    def device_type(self) -> str: ...

    @property
    def device_ids(self) -> tuple[int, ...]: ...

    def run_bound(
        self, instance: int, requests: Sequence[BoundRequest], output_names: list[str], placement: Placement
    ) -> list[dict[str, Array]]: ...

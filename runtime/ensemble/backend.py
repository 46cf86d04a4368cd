"""The backend of an ensemble version: no sessions and no instances of its own (its steps run on
their models' instances, through their queues). It holds the version's step graph, which the
engine runs (runtime/ensemble/scheduler.py) in place of a batch."""
from __future__ import annotations

from runtime.ensemble.graph import Graph
from runtime.errors import ExecutionError
from runtime.types import Array


class EnsembleBackend:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    @property
    def providers(self) -> list[str]:
        return []

    @property
    def instance_count(self) -> int:
        return 0  # no instance threads, and a queue that never runs a batch

    def prepare_input(self, name: str, array: Array) -> Array:
        return array  # each step's own model converts what it takes

    def run(self, instance: int, inputs: dict[str, Array], output_names: list[str]) -> dict[str, Array]:
        raise ExecutionError(f"{self.graph.label}: an ensemble has no session to run; its steps run on their models")

    def close(self) -> None:
        pass

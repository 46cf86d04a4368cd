"""An ensemble's steps as a DAG over named tensors: which steps each step waits for.

Built once per version, when it loads, from its config alone; everything that can be wrong with the
wiring itself (a tensor nobody produces, one produced twice, one nobody uses, a cycle) is a load
error naming the step, with Triton's rules.
How the steps fit the models they name is `composition.check`'s.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runtime.errors import ModelLoadError, quoted
from runtime.spec import EnsembleStep, VersionSpec


@dataclass(frozen=True, slots=True)
class Node:
    index: int  # the step's position in the config
    step: EnsembleStep
    after: tuple[int, ...]  # the steps whose outputs it reads

    @property
    def label(self) -> str:
        return step_label(self.index, self.step)


@dataclass(frozen=True, slots=True)
class Graph:
    label: str  # the ensemble version, for messages
    nodes: tuple[Node, ...]  # in a topological order: a node comes after every step it waits for
    inputs: tuple[str, ...]  # the ensemble's inputs
    outputs: tuple[str, ...]  # the ensemble's outputs
    producers: dict[str, int]  # ensemble tensor -> the step producing it (ensemble inputs are absent)


def step_label(index: int, step: EnsembleStep) -> str:
    return f"step {index} (model {quoted(step.model_name)})"


def build(spec: VersionSpec, label: str) -> Graph:
    """The DAG of `spec`'s ensemble_steps; ModelLoadError, naming the step, if its wiring is wrong."""
    steps = spec.ensemble_steps
    inputs = tuple(t.name for t in spec.inputs)
    outputs = tuple(t.name for t in spec.outputs)
    producers: dict[str, int] = {}
    for index, step in enumerate(steps):
        where = f"{label}: {step_label(index, step)}"
        if not step.model_name:
            raise ModelLoadError(f"{label}: step {index} names no model_name")
        if not step.output_map:
            raise ModelLoadError(f"{where} has no output_map: it would produce nothing")
        for output, tensor in sorted(step.output_map.items()):
            if not tensor:
                raise ModelLoadError(f"{where}: output_map maps output {quoted(output)} to an empty tensor name")
            if tensor in inputs:
                raise ModelLoadError(
                    f"{where}: output {quoted(output)} writes ensemble tensor {quoted(tensor)}, which is an ensemble input"
                )
            if tensor in producers:
                first = producers[tensor]
                other = "another of its outputs" if first == index else step_label(first, steps[first])
                raise ModelLoadError(
                    f"{where}: output {quoted(output)} writes ensemble tensor {quoted(tensor)}, which "
                    f"{other} also writes: each tensor has one producer"
                )
            producers[tensor] = index
    after: list[tuple[int, ...]] = []
    for index, step in enumerate(steps):
        needs = set()
        for model_input, tensor in sorted(step.input_map.items()):
            if tensor in producers:
                needs.add(producers[tensor])
            elif tensor not in inputs:
                raise ModelLoadError(
                    f"{label}: {step_label(index, step)}: input {quoted(model_input)} reads ensemble tensor "
                    f"{quoted(tensor)}, which no step produces and which is not an ensemble input "
                    f"(inputs: {', '.join(inputs) or 'none'})"
                )
        after.append(tuple(sorted(needs)))
    for tensor in outputs:
        if tensor not in producers:
            raise ModelLoadError(
                f"{label}: ensemble output {quoted(tensor)} is produced by no step (no output_map names it)"
            )
    # As Triton: every tensor is used, so that a misspelt name is an error, not a silent dead end.
    read = {tensor for step in steps for tensor in step.input_map.values()}
    for tensor in inputs:
        if tensor not in read:
            raise ModelLoadError(f"{label}: ensemble input {quoted(tensor)} is read by no step (no input_map names it)")
    for index, step in enumerate(steps):
        for output, tensor in sorted(step.output_map.items()):
            if tensor not in read and tensor not in outputs:
                raise ModelLoadError(
                    f"{label}: {step_label(index, step)}: output {quoted(output)} writes ensemble tensor "
                    f"{quoted(tensor)}, which no step reads and which is not an ensemble output"
                )
    order = _topological(after)
    if len(order) < len(steps):
        stuck = [i for i in range(len(steps)) if i not in set(order)]
        cycle = _cycle(after, stuck)
        if len(cycle) == 1:
            raise ModelLoadError(f"{label}: {step_label(cycle[0], steps[cycle[0]])} reads a tensor it writes itself: a cycle")
        raise ModelLoadError(
            f"{label}: the steps form a cycle: {', '.join(step_label(i, steps[i]) for i in cycle)} "
            "each wait for the next (and the last for the first)"
        )
    nodes = tuple(Node(i, steps[i], after[i]) for i in order)
    return Graph(label, nodes, inputs, outputs, producers)


def _topological(after: list[tuple[int, ...]]) -> list[int]:
    """Kahn's order, lowest index first among ready steps; steps on or behind a cycle are left out."""
    waiting = [len(set(needs)) for needs in after]
    followers: dict[int, list[int]] = {}
    for index, needs in enumerate(after):
        for need in set(needs):
            followers.setdefault(need, []).append(index)
    ready = sorted(i for i, count in enumerate(waiting) if count == 0)
    order: list[int] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for follower in followers.get(current, []):
            waiting[follower] -= 1
            if waiting[follower] == 0:
                ready.append(follower)
        ready.sort()
    return order


def _cycle(after: list[tuple[int, ...]], stuck: Iterable[int]) -> list[int]:
    """One cycle among the steps Kahn's order could not place, in the order its steps wait."""
    stuck_set = set(stuck)
    start = min(stuck_set)
    path: list[int] = []
    seen: dict[int, int] = {}
    current = start
    while current not in seen:
        seen[current] = len(path)
        path.append(current)
        # Every stuck step waits for at least one stuck step (else Kahn's order would have placed it).
        current = min(need for need in after[current] if need in stuck_set)
    return path[seen[current]:]

"""Runs one ensemble request: each step as soon as the tensors it reads exist, independent steps at
once, every step through the engine's own infer path for its model (validation, that model's queue
and batcher, its statistics), so ensemble traffic is batched with direct traffic to the same model.

Intermediate tensors stay numpy arrays in this process. The first step that fails fails the request
with its error's code (a client's mistake stays INVALID_ARGUMENT) and a message naming the step and
its model; the steps still running are cancelled.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from runtime.ensemble.graph import Graph, Node
from runtime.errors import RuntimeServingError
from runtime.model import ModelStats
from runtime.tracing import child_traceparent
from runtime.types import Array, InferRequest, InferResponse, RequestedOutput

Infer = Callable[[InferRequest], Awaitable[InferResponse]]


async def run(graph: Graph, request: InferRequest, inputs: dict[str, Array], infer: Infer) -> dict[str, Array]:
    """The ensemble's outputs for `inputs` (validated against the ensemble's schema)."""
    tensors: dict[str, Array] = dict(inputs)
    done: set[int] = set()
    running: dict[asyncio.Task[None], Node] = {}
    waiting = list(graph.nodes)
    try:
        while waiting or running:
            for node in [n for n in waiting if done.issuperset(n.after)]:
                waiting.remove(node)
                task = asyncio.ensure_future(_run_step(node, request, tensors, infer))
                running[task] = node
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                node = running.pop(task)
                error = task.exception()
                if error is not None:
                    raise _step_error(graph.label, node, error)
                done.add(node.index)
    finally:
        for task in running:
            task.cancel()
        if running:  # the other steps end before the request's error goes back
            await asyncio.wait(running)
    return {name: tensors[name] for name in graph.outputs}


async def _run_step(node: Node, request: InferRequest, tensors: dict[str, Array], infer: Infer) -> None:
    step = node.step
    response = await infer(
        InferRequest(
            model_name=step.model_name,
            model_version=str(step.model_version) if step.model_version > 0 else "",
            inputs={model_input: tensors[tensor] for model_input, tensor in step.input_map.items()},
            requested_outputs=[RequestedOutput(output) for output in step.output_map],
            id=request.id,
            parameters=request.parameters,  # priority, timeout: as the client asked of the ensemble
            deadline=request.deadline,
            protocol=request.protocol,
            trace_parent=child_traceparent(request),  # a traced ensemble's steps are children of its span
        )
    )
    for output, tensor in step.output_map.items():
        tensors[tensor] = response.outputs[output]


def _step_error(label: str, node: Node, error: BaseException) -> BaseException:
    if not isinstance(error, RuntimeServingError):
        return error
    message = f"{label}: {node.label}: {error.message}"
    try:
        wrapped = type(error)(message, error.code)  # the same class: the same code and metrics outcome
    except TypeError:
        wrapped = RuntimeServingError(message, error.code)
    wrapped.__cause__ = None
    return wrapped



def count_request(stats: ModelStats, rows: int, elapsed_ns: int) -> None:
    """An answered ensemble request in the ensemble's own statistics, as Triton counts them: its rows
    in inference_count, one queue entry (of no time: it waits in its steps' queues) and one compute
    entry of the whole run; no executions (the steps' batches count in their models' statistics).
    perf_analyzer finds the version it measured by the queue count that grew."""
    stats.inference_count += rows
    stats.queue.add(0)
    stats.compute_input.add(0)
    stats.compute_infer.add(elapsed_ns)
    stats.compute_output.add(0)
    stats.last_inference_ms = int(time.time() * 1000)

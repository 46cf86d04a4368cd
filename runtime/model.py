"""One loaded model version: its config (plain values, no protobuf), schema, backend, request queue and statistics."""
from __future__ import annotations

import asyncio
import enum
import functools
import time
import typing
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Coroutine, Sequence

import numpy as np

from runtime.backends.base import Backend, BindingBackend
from runtime.backends.binding import Binding, BoundRequest, Placement
from runtime.errors import Code, ExecutionError, InvalidInput, ModelLoadError, Unavailable
from runtime.batching import collate
from runtime.batching.ragged import cut, pad_stack, ragged_plan
from runtime.batching.ragged import group_key as ragged_group_key
from runtime.batching.workers import InstanceWorkers, WorkersUnavailable
from runtime.processing import Processing
from runtime.sequence import Feeds, SequenceBatcher, SequenceTag
from runtime.monitoring.observer import BatchTiming, NullObserver, Observer
from runtime.batching.queue import BatchPolicy, BatchQueue, LevelPolicy, Pending, TimeoutAction, window_of
from runtime.spec import QueuePolicy, VersionSpec, public_inputs, public_outputs
from runtime.types import Array, TensorSpec
from runtime.validate import RequestSchema, Validated

# How often an execution's thread CPU time is read for the inline-execution decision (--inline-execution-us):
# each of the first MEASURED_FIRST executions, then one in MEASURE_EVERY.
MEASURED_FIRST = 32
MEASURE_EVERY = 8

Outputs = dict[str, Array]


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class ModelStats:
    """Triton's statistics-extension counters for one version (field meanings as Triton's)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)  # lookups answered from the response cache
    cache_miss: Duration = field(default_factory=Duration)  # lookups that missed, with their insertions
    inference_count: int = 0  # rows
    execution_count: int = 0  # batches
    last_inference_ms: int = 0
    batch_stats: dict[int, tuple[Duration, Duration, Duration]] = field(default_factory=dict)

    def record_batch(self, timing: BatchTiming) -> None:
        """One executed batch: the one place batch counters are kept (the observer gets the same timing)."""
        input_ns = round(timing.input_seconds * 1e9)
        infer_ns = round(timing.infer_seconds * 1e9)
        output_ns = round(timing.output_seconds * 1e9)
        self.execution_count += 1
        self.inference_count += timing.rows
        self.last_inference_ms = int(time.time() * 1000)
        # Triton counts compute time once per request: each request of the batch "spent" the batch's time.
        count = len(timing.queue_seconds)
        self.compute_input.add(input_ns * count, count)
        self.compute_infer.add(infer_ns * count, count)
        self.compute_output.add(output_ns * count, count)
        for waited in timing.queue_seconds:
            self.queue.add(int(waited * 1e9))
        per_size = self.batch_stats.setdefault(timing.rows, (Duration(), Duration(), Duration()))
        per_size[0].add(input_ns)
        per_size[1].add(infer_ns)
        per_size[2].add(output_ns)


def batch_policy(config: VersionSpec, instances: int, default_max_queue_size: int) -> BatchPolicy:
    """Triton's dynamic_batching block as a BatchPolicy; no block means each request runs alone."""
    window = window_of(config.parameters, f"model {config.name!r}")  # checked even where unused
    batching = config.dynamic_batching
    if batching is None or config.max_batch_size == 0:
        return BatchPolicy(
            max_batch_rows=0, concurrency=instances, levels=(LevelPolicy(max_queue_size=default_max_queue_size),)
        )
    level_count = max(1, batching.priority_levels)

    def level(policy: QueuePolicy) -> LevelPolicy:
        return LevelPolicy(
            max_queue_size=policy.max_queue_size or default_max_queue_size,
            default_timeout_s=policy.default_timeout_us / 1e6 or None,
            allow_timeout_override=policy.allow_timeout_override or not policy.default_timeout_us,
            timeout_action=TimeoutAction.DELAY if policy.delay_on_timeout else TimeoutAction.REJECT,
        )

    levels = tuple(
        level(batching.priority_queue_policy.get(n, batching.default_queue_policy)) for n in range(1, level_count + 1)
    )
    return BatchPolicy(
        max_batch_rows=config.max_batch_size,
        max_delay_s=batching.max_queue_delay_us / 1e6,
        preferred_rows=tuple(sorted(batching.preferred_batch_size)),
        concurrency=instances,
        levels=levels,
        default_level=max(0, batching.default_priority_level - 1),
        window=window,
    )


class ServedModel:
    def __init__(
        self,
        config: VersionSpec,
        version: int,
        backend: Backend,
        default_max_queue_size: int,
        model_dir: Path,
        observer: Observer | None = None,
        processing: Processing | None = None,
        inline_execution_us: float = 0.0,
        labels: dict[str, tuple[str, ...]] | None = None,
        max_sequences: int = 1024,
    ) -> None:
        self.name = config.name
        self.version = version
        self.config = config
        self.backend = backend
        self.label = f"model {self.name!r} version {version}"
        self.model_dir = model_dir
        self.version_dir = model_dir / str(version)
        self.processing = processing
        self.labels: dict[str, tuple[str, ...]] = dict(labels or {})  # output -> its label_filename's lines
        # What clients see: the processing's public tensors when it has some, else the model's own.
        self.model_inputs: list[TensorSpec] = public_inputs(config)
        self.model_outputs: list[TensorSpec] = public_outputs(config)
        self.inputs: list[TensorSpec] = processing.public_inputs if processing else self.model_inputs
        self.outputs: list[TensorSpec] = processing.public_outputs if processing else self.model_outputs
        self.optional_inputs = frozenset(t.name for t in config.inputs if t.optional)
        self.output_names = [spec.name for spec in self.model_outputs]
        sequencing = config.sequence_batching
        if sequencing is not None:  # the model also gives its implicit state, which the sequence batcher keeps
            self.output_names += [state.output_name for state in sequencing.states]
        # What every request is checked against, built once for the version.
        self.schema = RequestSchema(self.label, self.inputs, self.outputs, config.max_batch_size, self.optional_inputs)
        self.state = ModelState.READY
        self.stats = ModelStats()
        self.observer: Observer = observer or NullObserver()
        self._input_reshape = {t.name: t.reshape for t in config.inputs if t.reshape is not None}
        self._output_reshape = {t.name: t.dims for t in config.outputs if t.reshape is not None}
        self._ragged = ragged_plan(config, self.label)  # may refuse the config, so before the threads
        # What its requests may bring by pointer from shared memory (runtime/shm, runtime/backends/binding.py).
        self.placement = _placement(self)
        # Executions shorter than this run on the event loop itself: for a tiny model, handing the
        # work to the instance thread and back costs more than the work.
        # Not on a GPU: there thread CPU time need not be wall time (a blocking stream sync sleeps).
        on_gpu = any(provider != "CPUExecutionProvider" for provider in backend.providers)
        self._inline_limit_ns = 0.0 if on_gpu else inline_execution_us * 1e3
        self._execution_ns: float | None = None  # moving average of backend.run's CPU time
        self._first_execution = True
        # Executions until the next one is timed: after the first few, one in MEASURE_EVERY (a thread CPU
        # clock read is a system call, twice per execution, and the average needs no more than a sample).
        self._until_measured = 0
        self._measured = 0
        # The queue reaches this model through a weak reference: no cycle between them, so a retired
        # (or never served) version is freed by reference counting the moment the registry lets it
        # go, not whenever the cyclic garbage collector runs. In-flight batches hold it strongly.
        this = weakref.ref(self)
        self.queue: BatchQueue[Validated, Outputs] = BatchQueue(
            f"{self.name}:{version}",
            batch_policy(config, backend.instance_count, default_max_queue_size),
            functools.partial(_run_batch_of, this),
            runs_inline=functools.partial(_runs_inline_of, this),
        )
        # A sequence model schedules with the sequence batcher instead (the queue above stays idle).
        self.sequencer: SequenceBatcher | None = None
        if sequencing is not None:
            feeds = Feeds(self.label, sequencing, config.max_batch_size > 0, model_dir)
            self.sequencer = SequenceBatcher(
                self.label, sequencing, config.max_batch_size, backend.instance_count, max_sequences, feeds,
                functools.partial(_run_rows_of, this), this,
            )
        # Last, so that nothing after the threads start can fail and leave them behind.
        try:
            self._workers = InstanceWorkers(backend.instance_count, f"{self.name}-v{version}")
        except WorkersUnavailable as exc:
            raise ModelLoadError(f"{self.label}: {exc.message}", Code.RESOURCE_EXHAUSTED) from None

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    def prepare(self, request: Validated) -> Validated:
        """Pre-processing and backend input conversion, per request, so bad data never reaches a batch."""
        inputs = request.inputs
        group = request.group
        if self.processing is not None:
            inputs = self.processing.preprocess(self.label, inputs)
            lead = 1 if self.max_batch_size > 0 else 0
            group = tuple(array.shape[lead:] for array in inputs.values())
        prepare = self.backend.prepare_input
        converted = {name: prepare(name, array) for name, array in inputs.items()}
        if self._ragged is not None:
            group = ragged_group_key(converted, self._ragged)
        return Validated(converted, request.rows, group, request.output_names)

    def finish(self, outputs: Outputs) -> Outputs:
        """Post-processing of one request's outputs (after the batch split)."""
        if self.processing is None:
            return outputs
        return self.processing.postprocess(self.label, outputs)

    async def infer(
        self, request: Validated, priority: int = 0, timeout_s: float | None = None, sequence: SequenceTag | None = None
    ) -> Outputs:
        if self.sequencer is not None:
            return await self.sequencer.submit(sequence, request.inputs, request.rows, request.group, timeout_s)
        if sequence is not None:
            raise InvalidInput(
                f"{self.label} has no sequence_batching: parameter sequence_id ({sequence.describe()}) is for "
                "sequence models; send the request without sequence_id, sequence_start and sequence_end"
            )
        return await self.queue.submit(request, request.rows, request.group, priority, timeout_s)

    def run_sync(self, inputs: dict[str, Array], instance: int = 0) -> Outputs:
        """Execute directly on one instance (warm-up); never used while serving."""
        return self._execute(instance, inputs)

    async def _run_batch(self, instance: int, items: Sequence[Pending[Validated, Outputs]]) -> list[Outputs]:
        return await self.run_rows(
            instance,
            [item.payload.inputs for item in items],
            [item.rows for item in items],
            [item.taken_at - item.enqueued_at for item in items],
            [item.payload.trace for item in items],
            [item.payload.binding for item in items],
        )

    async def run_rows(
        self,
        instance: int,
        inputs: list[dict[str, Array]],
        rows: list[int],
        queue_seconds: list[float],
        traces: Sequence[Any] = (),
        bindings: Sequence[Binding | None] = (),
    ) -> list[Outputs]:
        """One batch, one request per entry of `inputs`: the one batch path of the dynamic and the sequence
        batcher (stack, execute on the instance, split, statistics). Requests with tensors by pointer
        (`bindings`, from shared memory) run through the IO-binding executor, which gathers and scatters
        rows itself."""
        started = time.perf_counter_ns()
        if any(bindings):
            prepared = started  # gathering, running and scattering are one step there: counted as compute_infer
            results = await self._run_bound(instance, inputs, rows, bindings)
            ran = time.perf_counter_ns()
            batch = outputs = {}  # the observer sees no tensors of a bound batch (they stay where they lie)
        else:
            batch = collate.stack(inputs) if self._ragged is None else pad_stack(inputs, self._ragged)
            prepared = time.perf_counter_ns()
            if self.runs_inline:
                outputs = self._execute(instance, batch)
            else:
                outputs = await self._workers.run(instance, self._execute, instance, batch)
            ran = time.perf_counter_ns()
            results = collate.split(outputs, rows)
        if self._ragged is not None:
            results = [cut(result, request, self._ragged) for result, request in zip(results, inputs)]
        finished = time.perf_counter_ns()
        timing = BatchTiming(
            rows=sum(rows),
            queue_seconds=queue_seconds,
            input_seconds=(prepared - started) / 1e9,
            infer_seconds=(ran - prepared) / 1e9,
            output_seconds=(finished - ran) / 1e9,
            traces=traces,
        )
        self.stats.record_batch(timing)
        self.observer.batch_executed(self, timing, batch, outputs)
        return results

    async def _run_bound(
        self, instance: int, inputs: list[dict[str, Array]], rows: list[int], bindings: Sequence[Binding | None]
    ) -> list[Outputs]:
        # The lease binds only for a bindable placement, which only a BindingBackend has (_placement).
        backend = typing.cast(BindingBackend, self.backend)
        requests = [
            BoundRequest(request if binding is None else {**request, **binding.inputs}, count, binding)
            for request, count, binding in zip(inputs, rows, bindings)
        ]

        def run() -> list[Outputs]:
            measuring = self._measuring()  # as in _execute: CPU time of this thread
            started = time.thread_time_ns() if measuring else 0
            results = backend.run_bound(instance, requests, self.output_names, self.placement)
            if measuring:
                self._note_execution(time.thread_time_ns() - started)
            return results

        try:
            return run() if self.runs_inline else await self._workers.run(instance, run)
        except ExecutionError as exc:
            raise ExecutionError(f"{self.label}: {exc.message}") from None

    @property
    def runs_inline(self) -> bool:
        """Whether executions run on the event loop: measured, and under the inline limit."""
        average = self._execution_ns
        return average is not None and average < self._inline_limit_ns

    def _execute(self, instance: int, batch: dict[str, Array]) -> Outputs:
        if self._input_reshape:
            batch = {name: self._reshape_input(name, array) for name, array in batch.items()}
        # Measured only where it can move execution onto the loop. CPU time of this thread, not
        # wall time: on the instance thread, wall time would include waiting for the GIL after ORT
        # releases it, which is no cost of the model's.
        measuring = self._measuring()
        started = time.thread_time_ns() if measuring else 0
        try:
            outputs = self.backend.run(instance, batch, self.output_names)
        except ExecutionError as exc:  # the backend knows the session, not which model it serves
            raise ExecutionError(f"{self.label}: {exc.message}") from None
        if measuring:
            self._note_execution(time.thread_time_ns() - started)
        if self._output_reshape:
            lead = 1 if self.max_batch_size > 0 else 0
            outputs = {
                name: array.reshape(array.shape[:lead] + self._output_reshape[name]) if name in self._output_reshape else array
                for name, array in outputs.items()
            }
        return outputs

    def _measuring(self) -> bool:
        """Whether to time this execution: every one of the first MEASURED_FIRST, then one in MEASURE_EVERY."""
        if self._inline_limit_ns <= 0:
            return False
        if self._until_measured:
            self._until_measured -= 1
            return False
        self._measured += 1
        if self._measured > MEASURED_FIRST:
            self._until_measured = MEASURE_EVERY - 1
        return True

    def _note_execution(self, cpu_ns: int) -> None:
        if self._first_execution:  # the warm-up: one-time initialisation, not the model's cost
            self._first_execution = False
            return
        average = self._execution_ns
        self._execution_ns = cpu_ns if average is None else average + (cpu_ns - average) / 16

    def _reshape_input(self, name: str, array: Array) -> Array:
        shape = self._input_reshape.get(name)
        if shape is None:
            return array
        lead = array.shape[:1] if self.max_batch_size > 0 else ()
        return np.reshape(array, lead + shape)

    async def close(self) -> None:
        """Drain queued and running requests, then stop the instance threads and free the sessions."""
        self.state = ModelState.UNLOADING
        try:
            if self.sequencer is not None:  # live sequences finish here first (or are released as idle)
                await self.sequencer.close()
            await self.queue.close()
            await asyncio.to_thread(self._workers.shutdown)
        finally:
            self.discard()

    def discard(self) -> None:
        """Free threads and sessions now, without draining: for a version that never served
        (a load that failed after this was built) and for the end of close()."""
        self._workers.shutdown()
        self.backend.close()
        self.state = ModelState.UNAVAILABLE


def _run_batch_of(
    model: weakref.ref[ServedModel], instance: int, items: Sequence[Pending[Validated, Outputs]]
) -> Coroutine[Any, Any, list[Outputs]]:
    # A plain function handing back the model's coroutine (which holds the model while it runs):
    # no extra coroutine per batch.
    served = model()
    if served is None:  # cannot happen while the registry holds it; a freed model serves nothing
        raise Unavailable("the model version was unloaded")
    return served._run_batch(instance, items)


def _run_rows_of(
    model: weakref.ref[ServedModel], instance: int, inputs: list[dict[str, Array]], rows: list[int], waited: list[float]
) -> Coroutine[Any, Any, list[Outputs]]:
    served = model()
    if served is None:
        raise Unavailable("the model version was unloaded")
    return served.run_rows(instance, inputs, rows, waited)


def _runs_inline_of(model: weakref.ref[ServedModel]) -> bool:
    served = model()
    return served is not None and served.runs_inline


def _placement(served: ServedModel) -> Placement:
    """Whether (and where) a version's requests may bring tensors by pointer: an ONNX model that reads
    its inputs as they are. Processing, padding, reshapes, the sequence batcher and the response cache
    read or hash inputs on the host, so their requests' shared-memory tensors are read as arrays."""
    backend = served.backend
    config = served.config
    if not isinstance(backend, BindingBackend):
        return Placement(served.label, bindable=False)
    plain = (
        backend.binds_pointers
        and served.processing is None
        and served._ragged is None
        and not served._input_reshape
        and not served._output_reshape
        and config.sequence_batching is None
        and not config.response_cache
    )
    batched = config.max_batch_size > 0
    shapes: dict[str, tuple[int, ...] | None] = {}
    for spec in served.model_outputs:
        fixed = spec.shape[1:] if batched else spec.shape
        shapes[spec.name] = spec.shape if all(dim >= 0 for dim in fixed) else None
    return Placement(
        served.label,
        bindable=plain,
        device_type=backend.device_type,
        device_ids=backend.device_ids,
        output_datatypes={spec.name: spec.datatype for spec in served.model_outputs},
        output_shapes=shapes,
        batched=batched,
    )

"""The one async core: infer(request) -> response, plus the metadata the protocol exposes.

Knows nothing of HTTP or gRPC; transports decode into `InferRequest` and encode `InferResponse`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Protocol

from runtime import SERVER_NAME, __version__, cache, ensemble, statistics
from runtime.errors import InvalidInput, RuntimeServingError
from runtime.cache import ResponseCache
from runtime.model import ModelState, ServedModel
from runtime.monitoring.observer import SUCCESS, NullObserver, Observer, outcome_of
from runtime.processing import classify_outputs
from runtime.repository.model_config import ModelConfig, config_message, public_config_message
from runtime.repository.registry import ModelRegistry, VersionRecord
from runtime.sequence import SequenceTag, sequence_tag
from runtime.sequence.request import PARAMETERS as SEQUENCE_PARAMETERS
from runtime.shm import CudaRegionStatus, Lease, RegionTable, SharedMemoryApi, SystemRegionStatus
from runtime.statistics import ModelStatistics
from runtime.types import Array, InferRequest, InferResponse, RequestedOutput, TensorSpec

# Protocol extensions we implement (GET /v2 and ServerMetadata list them; clients probe them).
EXTENSIONS = [
    "model_configuration",
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "classification",
    "statistics",
    "system_shared_memory",
    "cuda_shared_memory",
    "trace",
    "logging",
]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    execution_providers: list[str]


class EngineApi(SharedMemoryApi, Protocol):
    """What the transports call: the Engine in this process, or a front end's RemoteEngine (runtime/frontend.py)
    that forwards each call to the engine process (Triton's shared-memory calls included)."""

    async def live(self) -> bool: ...
    async def ready(self) -> bool: ...
    async def model_ready(self, name: str, version: str = "", *, strict: bool = False) -> bool: ...
    async def server_metadata(self) -> tuple[str, str, list[str]]: ...
    async def model_metadata(self, name: str, version: str = "") -> ModelMetadata: ...
    async def model_config(self, name: str, version: str = "") -> ModelConfig: ...
    async def statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]: ...
    async def infer(self, request: InferRequest) -> InferResponse: ...


class Engine:
    def __init__(
        self,
        registry: ModelRegistry,
        observer: Observer | None = None,
        shared_memory: RegionTable | None = None,
        response_cache: ResponseCache | None = None,
    ) -> None:
        self.registry = registry
        self.observer: Observer = observer or NullObserver()
        # Triton's shared-memory extensions: regions are mapped here, by the process that reads them.
        self.shared_memory = shared_memory or RegionTable(allowed=False)
        self.cache = response_cache  # Triton's response cache (--cache-config), for versions that enable it
        self._accepting = True

    # ---- health -----------------------------------------------------------------------------

    async def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        """Ready while accepting requests; one model reloading does not make the server unready."""
        return self._accepting

    def stop_accepting(self) -> None:
        self._accepting = False

    async def model_ready(self, name: str, version: str = "", *, strict: bool = False) -> bool:
        """Whether that version serves; an unknown model or version is not ready, or with `strict`
        raises the registry's error (ModelNotFound) instead."""
        try:
            record = self.registry.record(name, version)
        except Exception:
            if strict:
                raise
            return False
        if record.state is not ModelState.READY:
            return False
        # An ensemble is ready while every step's model is.
        return record.served is None or self.registry.unready_step(record.served) is None

    # ---- metadata ---------------------------------------------------------------------------

    async def server_metadata(self) -> tuple[str, str, list[str]]:
        return SERVER_NAME, __version__, list(EXTENSIONS)

    async def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        served = self.registry.get(name, version)
        versions = [str(served.version)] if version else [str(v) for v in self.registry.ready_versions(name)]
        return ModelMetadata(
            name=name,
            versions=versions,
            platform=served.config.platform,
            inputs=served.inputs,
            outputs=served.outputs,
            execution_providers=served.backend.providers,
        )

    async def model_config(self, name: str, version: str = "") -> ModelConfig:
        served = self.registry.get(name, version)
        if served.processing is None:
            return config_message(served.config)
        # A processing model shows its public tensors in place of the ONNX graph's.
        return public_config_message(served.config, served.processing.public_inputs, served.processing.public_outputs)

    def index(self) -> list[VersionRecord]:
        return self.registry.records()

    async def statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Triton's statistics extension: every loaded version, one model's, or one version's counters."""
        return statistics.statistics(self.registry, name, version)

    # ---- shared memory (Triton's system and CUDA shared-memory extensions) -------------------

    async def system_shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await self.shared_memory.register_system(name, key, offset, byte_size)

    async def system_shm_status(self, name: str = "") -> list[SystemRegionStatus]:
        return self.shared_memory.system_status(name)

    async def system_shm_unregister(self, name: str = "") -> None:
        await self.shared_memory.unregister_system(name)

    async def cuda_shm_register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        await self.shared_memory.register_cuda(name, raw_handle, device_id, byte_size)

    async def cuda_shm_status(self, name: str = "") -> list[CudaRegionStatus]:
        return self.shared_memory.cuda_status(name)

    async def cuda_shm_unregister(self, name: str = "") -> None:
        await self.shared_memory.unregister_cuda(name)

    # ---- inference --------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.perf_counter()
        served: ServedModel | None = None
        try:
            served = self.registry.get(request.model_name, request.model_version)
            sequence = sequence_tag(request.parameters)  # Triton's sequence_id, sequence_start, sequence_end
            if sequence is not None:
                served = _sequence_holder(served, sequence, request)
            self.observer.request_started(request, served)
            lease = self.shared_memory.lease(request)  # None unless a tensor is in shared memory
            try:
                response = await self._infer(served, request, lease, sequence)
            finally:
                if lease is not None:
                    lease.release()
        except BaseException as error:
            self.observer.request_finished(request, served, outcome_of(error), time.perf_counter() - started)
            raise
        self.observer.request_finished(request, served, SUCCESS, time.perf_counter() - started)
        return response

    def count_refused(self, request: InferRequest, error: BaseException, seconds: float) -> None:
        """A request refused before it reached this engine (a --workers N front end's schema check),
        counted as infer counts one it refuses: routed first (a traffic split's turn is used), then
        finished with the error's outcome."""
        try:
            served: ServedModel | None = self.registry.get(request.model_name, request.model_version)
        except RuntimeServingError:
            served = None
        if served is not None:
            self.observer.request_started(request, served)
        self.observer.request_finished(request, served, outcome_of(error), seconds)

    async def _ensemble_step(self, request: InferRequest) -> InferResponse:
        """One step of an ensemble request. As in Triton, the ensemble's sequence parameters go to every
        step, and a step whose model has no sequence batcher runs without them instead of refusing them
        (a stateless pre-processing step before a stateful model)."""
        if any(name in request.parameters for name in SEQUENCE_PARAMETERS):
            served = self.registry.get(request.model_name, request.model_version)
            if served.sequencer is None:  # routed once, here: the step names the version it was routed to
                request = dataclasses.replace(
                    request, model_version=str(served.version), parameters=_without_sequence(request.parameters)
                )
        return await self.infer(request)

    async def _infer(
        self, served: ServedModel, request: InferRequest, lease: Lease | None = None, sequence: SequenceTag | None = None
    ) -> InferResponse:
        inputs = request.inputs if lease is None else lease.read_inputs(request.inputs, served.placement)
        validated = served.schema.validate(inputs)
        selection = served.schema.select_outputs(request.requested_outputs)
        key, cached = cache.lookup(self.cache, served, request, validated.inputs)
        if cached is not None:  # answered without queueing or executing
            _scheduling(request, served)  # what a miss would refuse, a hit refuses too
            return _response(served, request, selection.wanted, cached, lease)
        if served.processing is not None:
            # Decoding and resizing images takes milliseconds; the kernels release the GIL.
            validated = await asyncio.to_thread(served.prepare, validated)
        else:
            validated = served.prepare(validated)
        if request.trace is not None:  # a sampled request's span rides with it into its batch (runtime/tracing)
            validated = dataclasses.replace(validated, trace=request.trace)
        if lease is not None and lease.binding:  # tensors by pointer ride with it into its batch (runtime/shm)
            validated = dataclasses.replace(validated, binding=lease.binding)
        priority, timeout_s = _scheduling(request, served)
        started = time.perf_counter_ns()
        try:
            if isinstance(served.backend, ensemble.EnsembleBackend):  # each step through this infer, for its model
                outputs = await ensemble.run(served.backend.graph, request, validated.inputs, self._ensemble_step)
                ensemble.count_request(served.stats, validated.rows, time.perf_counter_ns() - started)
            else:
                outputs = await served.infer(validated, priority, timeout_s, sequence)
        except BaseException:
            served.stats.fail.add(time.perf_counter_ns() - started)
            raise
        served.stats.success.add(time.perf_counter_ns() - started)
        outputs = served.finish(outputs)
        if selection.classified:  # Triton's classification extension
            outputs = classify_outputs(served, selection.classified, outputs)
        if selection.wanted is not None:
            outputs = {name: outputs[name] for name in selection.wanted}
        cache.store(self.cache, served, key, outputs)
        return _response(served, request, selection.wanted, outputs, lease)


def _response(
    served: ServedModel,
    request: InferRequest,
    wanted: dict[str, RequestedOutput] | None,
    outputs: dict[str, Array],
    lease: Lease | None,
) -> InferResponse:
    if lease is not None:
        outputs = lease.write_outputs(outputs)
    return InferResponse(
        model_name=served.name,
        model_version=str(served.version),
        outputs=outputs,
        id=request.id,
        requested_outputs=wanted,
    )


def _without_sequence(parameters: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in parameters.items() if name not in SEQUENCE_PARAMETERS}


def _sequence_holder(served: ServedModel, sequence: SequenceTag, request: InferRequest) -> ServedModel:
    """A request continuing a sequence goes to the version that holds it, the one it started on (after a
    swap, or under a traffic split); a start, or a request naming its version, goes where it was routed."""
    if sequence.start or served.sequencer is None or request.model_version:
        return served
    holder = served.sequencer.directory.holder(sequence.key)
    return holder if isinstance(holder, ServedModel) else served


def _scheduling(request: InferRequest, served: ServedModel) -> tuple[int, float | None]:
    """Priority level and queue timeout from the request's parameters and deadline."""
    params = request.parameters
    priority = params.get("priority", 0)
    timeout_us = params.get("timeout", None)
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise InvalidInput(f"{served.label}: parameter 'priority' must be a non-negative integer, got {priority!r}")
    timeout_s: float | None = None
    if timeout_us is not None:
        if not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us < 0:
            raise InvalidInput(
                f"{served.label}: parameter 'timeout' must be a non-negative integer of microseconds, got {timeout_us!r}"
            )
        timeout_s = timeout_us / 1e6 if timeout_us else None
    if request.deadline is not None:
        remaining = request.deadline - time.monotonic()
        timeout_s = remaining if timeout_s is None else min(timeout_s, remaining)
        timeout_s = max(timeout_s, 1e-6)
    return priority, timeout_s

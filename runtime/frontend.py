"""A front-end process of `--workers N`: HTTP and gRPC (and the admin port) on ports it shares with the
other front ends (SO_REUSEPORT), decoding and encoding here, everything else in the engine process
(runtime/engine_host.py) over runtime.ipc.

RemoteEngine and RemoteAdmin have the methods the transports call on runtime.engine.Engine and
runtime.admin.Admin (EngineApi, AdminApi) and forward each to the engine; their answers come back as
the same dataclasses. infer() puts the request tensors in this front end's request slab and gets the
outputs as numpy views of its response slab: the transport encodes from those views, then
InferResponse.release() gives the blocks back to the engine.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.admin import IndexRow, check_token
from runtime.catalogue import Catalogue
from runtime.config import Settings
from runtime.engine import ModelMetadata
from runtime.errors import InvalidInput, Unavailable
from runtime.ipc.channel import Caller, Channel, ChannelClosed, Message
from runtime.ipc.slab import Slab
from runtime.ipc.tensors import read_tensors, write_tensors
from runtime.repository.model_config import ModelConfig, config_from_json
from runtime.sequence.request import PARAMETERS as SEQUENCE_PARAMETERS
from runtime.shm import CudaRegionStatus, SystemRegionStatus
from runtime import statistics
from runtime.statistics import ModelStatistics
from runtime.tracing.control import SettingValue
from runtime.tracing.logs import LogControl, LogValue
from runtime.types import InferRequest, InferResponse, RequestedOutput, SharedInput, TensorSpec

log = logging.getLogger("runtime.frontend")

DEFAULT_SLAB_BYTES = 64 * 1024 * 1024


async def _call(caller: Caller, op: str, **fields: Any) -> Any:
    try:
        reply = await caller.call(op, **fields)
    except TypeError as exc:  # orjson: e.g. an integer parameter beyond 64 bits
        raise InvalidInput(f"the request cannot be forwarded to the engine process: {exc}") from None
    return reply.get("result")


def _tensor_spec(doc: dict[str, Any]) -> TensorSpec:
    return TensorSpec(doc["name"], doc["datatype"], tuple(doc["shape"]))


class RemoteEngine:
    """runtime.engine.EngineApi over the channel to the engine process."""

    def __init__(self, caller: Caller, requests: Slab, responses: Slab, catalogue: Catalogue | None = None) -> None:
        self.caller = caller
        self.requests = requests  # this side allocates; the engine reads
        self.responses = responses  # the engine allocates; this side reads, then releases
        # What this front end answers without asking the engine, while it is current (runtime/catalogue.py).
        self.catalogue = catalogue
        self._tickets = itertools.count(1)
        self._accepting = True

    async def live(self) -> bool:
        return bool(await _call(self.caller, "engine.live"))

    async def ready(self) -> bool:
        return self._accepting and bool(await _call(self.caller, "engine.ready"))

    def stop_accepting(self) -> None:
        self._accepting = False

    async def model_ready(self, name: str, version: str = "", *, strict: bool = False) -> bool:
        entry = self.catalogue.lookup(name, version) if self.catalogue is not None else None
        if entry is not None:
            return entry.ready
        return bool(await _call(self.caller, "engine.model_ready", name=name, version=version, strict=strict))

    async def server_metadata(self) -> tuple[str, str, list[str]]:
        name, version, extensions = await _call(self.caller, "engine.server_metadata")
        return name, version, list(extensions)

    async def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        entry = self.catalogue.lookup(name, version) if self.catalogue is not None else None
        if entry is not None:
            return entry.metadata
        doc = await _call(self.caller, "engine.model_metadata", name=name, version=version)
        return ModelMetadata(
            name=doc["name"],
            versions=list(doc["versions"]),
            platform=doc["platform"],
            inputs=[_tensor_spec(t) for t in doc["inputs"]],
            outputs=[_tensor_spec(t) for t in doc["outputs"]],
            execution_providers=list(doc["execution_providers"]),
        )

    async def model_config(self, name: str, version: str = "") -> ModelConfig:
        entry = self.catalogue.lookup(name, version) if self.catalogue is not None else None
        if entry is not None:
            config = ModelConfig()
            config.CopyFrom(entry.config)  # the caller's own message, as the engine's answer would be
            return config
        doc = await _call(self.caller, "engine.model_config", name=name, version=version)
        return config_from_json(doc, f"model {name!r}: the engine's configuration")

    async def statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        docs = await _call(self.caller, "engine.statistics", name=name, version=version)
        return [statistics.from_dict(ModelStatistics, doc) for doc in docs]

    # Triton's shared-memory extensions: the engine process maps the regions (it reads the inputs into
    # the batch and writes the outputs), so registration goes there; every front end sees the same table.

    async def system_shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await _call(self.caller, "engine.system_shm_register", name=name, key=key, offset=offset, byte_size=byte_size)

    async def system_shm_status(self, name: str = "") -> list[SystemRegionStatus]:
        return [SystemRegionStatus(**doc) for doc in await _call(self.caller, "engine.system_shm_status", name=name)]

    async def system_shm_unregister(self, name: str = "") -> None:
        await _call(self.caller, "engine.system_shm_unregister", name=name)

    async def cuda_shm_register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        handle = base64.b64encode(raw_handle).decode()
        await _call(
            self.caller, "engine.cuda_shm_register", name=name, raw_handle=handle, device_id=device_id, byte_size=byte_size
        )

    async def cuda_shm_status(self, name: str = "") -> list[CudaRegionStatus]:
        return [CudaRegionStatus(**doc) for doc in await _call(self.caller, "engine.cuda_shm_status", name=name)]

    async def cuda_shm_unregister(self, name: str = "") -> None:
        await _call(self.caller, "engine.cuda_shm_unregister", name=name)

    def _check(self, request: InferRequest) -> None:
        """Refuse here what the engine would refuse first (the schema of the version the request names,
        in the current catalogue): a bad request never crosses the hop. Inputs in shared memory and
        sequence requests (which may continue on another version) are the engine's to check."""
        if self.catalogue is None or request.shared_inputs or any(p in request.parameters for p in SEQUENCE_PARAMETERS):
            return
        entry = self.catalogue.lookup(request.model_name, request.model_version)
        if entry is None:
            return
        started = time.perf_counter()
        try:
            entry.schema.validate(request.inputs)
            entry.schema.select_outputs(request.requested_outputs)
        except InvalidInput:
            with contextlib.suppress(Unavailable):
                self.caller.notify(
                    "refused",
                    model=request.model_name,
                    version=request.model_version,
                    protocol=request.protocol,
                    seconds=time.perf_counter() - started,
                )
            raise

    async def infer(self, request: InferRequest) -> InferResponse:
        self._check(request)
        written = write_tensors(self.requests, request.inputs)
        if written is None:
            raise Unavailable(
                f"model {request.model_name!r}: the request's tensors do not fit in what is free of this worker's "
                f"{self.requests.size}-byte request slab (--worker-slab-bytes); retry later"
            )
        refs, offsets = written
        ticket = next(self._tickets)
        wanted = request.requested_outputs
        try:
            reply = await self.caller.call(
                "infer",
                ticket=ticket,
                model=request.model_name,
                version=request.model_version,
                inputs=refs,
                outputs=None if wanted is None else [output_descriptor(o) for o in wanted],
                shared_inputs=None if not request.shared_inputs else shared_inputs_descriptor(request.shared_inputs),
                request_id=request.id,
                parameters=request.parameters,
                deadline=request.deadline,
                protocol=request.protocol,
                trace_parent=request.trace_parent,
            )
        except asyncio.CancelledError:
            # The engine cancels it (out of the queue, as a local cancel), or gives back its outputs
            # if it had answered already.
            with contextlib.suppress(Unavailable):
                self.caller.notify("cancel", ticket=ticket)
            raise
        except TypeError as exc:
            raise InvalidInput(f"the request cannot be forwarded to the engine process: {exc}") from None
        finally:
            # The engine has answered (or will not read them for anything that is still wanted).
            for offset in offsets:
                self.requests.free(offset)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                with contextlib.suppress(Unavailable):
                    # Lazy: it rides along with the next infer instead of waking the engine by itself.
                    self.caller.notify("release", ticket=ticket, lazy=True)

        try:
            outputs = read_tensors(self.responses, reply["outputs"], copy=False)
        except BaseException:
            release()
            raise
        return InferResponse(
            model_name=reply["model_name"],
            model_version=reply["model_version"],
            outputs=outputs,
            id=reply.get("request_id", ""),
            requested_outputs={o.name: o for o in wanted} if wanted else None,
            release=release,
        )


def output_descriptor(output: RequestedOutput) -> list[Any]:
    """[name, binary, classification, shared memory as [region, byte_size, offset] | None]."""
    memory = output.shared_memory
    place = None if memory is None else [memory.region, memory.byte_size, memory.offset]
    return [output.name, output.binary, output.classification, place]


def shared_inputs_descriptor(shared: dict[str, SharedInput]) -> dict[str, list[Any]]:
    """name -> [datatype, shape, region, byte_size, offset]: the engine reads these from the region itself."""
    return {
        name: [s.datatype, list(s.shape), s.memory.region, s.memory.byte_size, s.memory.offset] for name, s in shared.items()
    }


class RemoteTraceSettings:
    """The trace extension's settings over the channel: they are the engine's, where the spans are made."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def trace_settings(self, model: str = "") -> dict[str, SettingValue]:
        settings: dict[str, SettingValue] = await _call(self.caller, "engine.trace_settings", model=model)
        return settings

    async def update_trace_settings(self, model: str, changes: Mapping[str, SettingValue | None]) -> dict[str, SettingValue]:
        settings: dict[str, SettingValue] = await _call(self.caller, "engine.trace_update", model=model, changes=dict(changes))
        return settings


class RemoteLogSettings:
    """The logging extension with --workers N: a change goes to the engine process, which applies it and
    sends it on to every front end (the "log_settings" notice), so every process logs alike."""

    def __init__(self, caller: Caller, local: LogControl) -> None:
        self.caller = caller
        self.local = local

    async def log_settings(self) -> dict[str, LogValue]:
        return self.local.settings()

    async def update_log_settings(self, changes: Mapping[str, object]) -> dict[str, LogValue]:
        # The engine checks and applies it (a bad change is refused there and goes nowhere), then sends
        # the notice to every front end, this one included, before its reply: applied here by now.
        await _call(self.caller, "engine.log_update", changes=dict(changes))
        return self.local.settings()


def apply_notice(logs: LogControl, catalogue: Catalogue, message: Message) -> None:
    """A notice the engine pushes to every front end: "log_settings" (a change made through any of
    them) or "catalogue" (what serves changed)."""
    op = message.get("op")
    if op == "log_settings":
        logs.update(message.get("changes") or {})
    elif op == "catalogue":
        catalogue.update(message["document"])


class RemoteAdmin:
    """runtime.admin.AdminApi over the channel; the token check stays here (the settings hold it)."""

    def __init__(self, caller: Caller, settings: Settings) -> None:
        self.caller = caller
        self.settings = settings

    def authenticate(self, credential: str | None) -> None:
        check_token(self.settings, credential)

    async def index(self, ready_only: bool) -> list[IndexRow]:
        rows = await _call(self.caller, "admin.index", ready=ready_only)
        return [
            IndexRow(
                row["name"],
                row["state"],
                row["reason"],
                row["version"],
                row["traffic_weight"],
                None if row["labels"] is None else tuple(row["labels"]),
            )
            for row in rows
        ]

    async def load(self, name: str, parameters: dict[str, Any], binary_files: bool = False) -> list[int]:
        binary_keys = [key for key, value in parameters.items() if isinstance(value, bytes)]
        plain = {
            key: base64.b64encode(value).decode() if isinstance(value, bytes) else value
            for key, value in parameters.items()
        }
        versions = await _call(
            self.caller, "admin.load", name=name, parameters=plain, binary_keys=binary_keys, binary_files=binary_files
        )
        return [int(v) for v in versions]

    async def unload(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        await _call(self.caller, "admin.unload", name=name, parameters=parameters or {})

    async def rollback(self, name: str) -> list[int]:
        return [int(v) for v in await _call(self.caller, "admin.rollback", name=name)]

    async def traffic(self, name: str, weights: Any) -> None:
        await _call(self.caller, "admin.traffic", name=name, weights=weights)

    async def labels(self, name: str, labels: Any) -> None:
        await _call(self.caller, "admin.labels", name=name, labels=labels)


@dataclass
class Connection:
    """A front end's link to the engine process: the channel, its two slabs, the remote objects."""

    caller: Caller
    requests: Slab
    responses: Slab
    engine: RemoteEngine
    admin: RemoteAdmin
    traces: RemoteTraceSettings
    logs: RemoteLogSettings
    engine_pid: int = 0

    async def close(self) -> None:
        await self.caller.close()
        self.requests.close()
        self.responses.close()


async def connect(settings: Settings, engine_address: str, index: int) -> Connection:
    """Connect to the engine, hand it this front end's two slabs (memfds: no name anywhere, gone with
    the processes) and wait for its welcome."""
    size = int(getattr(settings, "worker_slab_bytes", DEFAULT_SLAB_BYTES))
    requests = Slab.create(size, f"model-runtime-{index}-requests")
    responses = Slab.create(size, f"model-runtime-{index}-responses")
    try:
        channel = await Channel.connect(engine_address)
        hello: Message = {
            "id": 0,
            "op": "hello",
            "index": index,
            "request_slab_bytes": requests.size,
            "response_slab_bytes": responses.size,
        }
        await channel.send(hello, fds=[requests.fd, responses.fd])
        try:
            welcome, *notices = await channel.receive_many()
        except ChannelClosed:
            raise Unavailable("the engine process refused this front end's hello") from None
        if welcome.get("id") != 0 or "generation_offset" not in (welcome.get("result") or {}):
            await channel.close()
            raise Unavailable(f"the engine process answered the hello with {welcome!r}")
        from runtime.app import log_control_for

        local_logs = log_control_for(settings)
        catalogue = Catalogue(responses.view(int(welcome["result"]["generation_offset"]), 8).cast("q"))
        # The first catalogue follows the welcome: serve nothing before it is here.
        try:
            while not any(notice.get("op") == "catalogue" for notice in notices):
                for notice in notices:
                    apply_notice(local_logs, catalogue, notice)
                notices = await channel.receive_many()
        except ChannelClosed:
            raise Unavailable("the engine process closed the channel before its catalogue came") from None
        for notice in notices:
            apply_notice(local_logs, catalogue, notice)
    except BaseException:
        requests.close()
        responses.close()
        raise
    caller = Caller(channel, on_message=lambda message: apply_notice(local_logs, catalogue, message))
    logs = RemoteLogSettings(caller, local_logs)
    return Connection(
        caller,
        requests,
        responses,
        RemoteEngine(caller, requests, responses, catalogue),
        RemoteAdmin(caller, settings),
        RemoteTraceSettings(caller),
        logs,
        int(welcome["result"].get("pid", 0)),
    )


async def serve_frontend(settings: Settings, engine_address: str, index: int) -> int:
    """HTTP + gRPC (+ the admin port) on the shared ports until SIGTERM (drain) or the engine is gone (exit 1)."""
    from runtime.app import _exit_now, begin_drain, protocol_servers, start_servers, stop_protocol_servers

    link = await connect(settings, engine_address, index)
    http, grpc_server, admin_server = protocol_servers(
        settings, link.engine, link.admin, reuse_port=True, trace_control=link.traces, log_control=link.logs
    )
    ports = await start_servers({"admin": admin_server, "http": http, "grpc": grpc_server})
    log.info("front end %d serving: HTTP %s, gRPC %s", index, ports["http"], ports["grpc"])
    sys.stdout.write("READY " + json.dumps(ports) + "\n")
    sys.stdout.flush()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stopping = loop.create_task(stop.wait())
    engine_gone = loop.create_task(link.caller.wait_closed())
    await asyncio.wait({stopping, engine_gone}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        log.error("front end %d: the channel to the engine process closed; exiting", index)
        _exit_now(1)

    _, deadline = begin_drain(settings, f"front end {index} shutting down")
    link.engine.stop_accepting()
    drained = await stop_protocol_servers(http, grpc_server, admin_server, deadline)
    await link.close()
    status = 0 if drained else 1
    if status:
        log.error("front end %d: grace period over with requests unfinished", index)
    await asyncio.sleep(0.05)  # the requests uvicorn just cancelled write their 503s
    _exit_now(status)


def run_frontend(settings: Settings, engine_address: str, index: int) -> int:
    """Process main of a front end (`python -m runtime _frontend`): logging, signals, READY on stdout."""
    from runtime.app import configure_logging
    from runtime.app import run_coroutine

    configure_logging(settings)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor sends SIGTERM when it is time
    return run_coroutine(settings, serve_frontend(settings, engine_address, index))

"""The engine process of `--workers N`: registry, batch queues, ONNX Runtime sessions, poller and the
metrics port, serving the front ends (runtime/frontend.py) over runtime.ipc.

Each front end connects once and says hello with two memfd slabs: the request slab (the front end
allocates in it and writes request tensors; the engine reads them as numpy views) and the response slab
(the engine allocates in it and writes outputs; the front end encodes from views, then says "release").
Requests from every front end go through the one Engine, so they share batches.

Ops (runtime.ipc.Caller frames; every reply carries the call's "id"):
  engine.<live|ready|model_ready|server_metadata|model_metadata|model_config|statistics>
  engine.<system|cuda>_shm_<register|status|unregister> (Triton's shared-memory extensions: regions are
         mapped here, by the process that reads and writes them)
  admin.<index|load|unload|rollback|traffic|labels>
  infer {ticket, model, version, inputs: [TensorRef],
         outputs: [[name, binary, classification, [region, byte_size, offset] | null]] | null,
         shared_inputs: {name: [datatype, shape, region, byte_size, offset]} | null,
         request_id, parameters, deadline, protocol, trace_parent} -> {outputs: [TensorRef], model_name, model_version, request_id}
  cancel {ticket} (notice): cancel that infer, or give back its outputs if it had already answered
  release {ticket} (notice): the front end has encoded that infer's outputs; their blocks are free again
  refused {model, version, protocol, seconds} (notice): the front end refused an infer that failed its
         catalogue's schema; counted here as the engine counts its own refusals, so /metrics is exact
Notices to the front ends: "catalogue" (runtime/catalogue.py: what they answer without asking; its
generation counter is an int64 in each front end's response slab, at the welcome's generation_offset)
and "log_settings".
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Awaitable, Callable

from runtime import __version__, catalogue, codec
from runtime.admin import Admin
from runtime.config import Settings
from runtime.engine import Engine
from runtime.errors import Code, InvalidInput, RuntimeServingError, Unavailable
from runtime.ipc.channel import Channel, ChannelClosed, ChannelServer, Message
from runtime.ipc.slab import Slab
from runtime.ipc.tensors import read_tensors, write_tensors
from runtime.repository.model_config import config_to_json
from runtime.tracing import control_for
from runtime.tracing.control import TraceSettingsApi
from runtime.tracing.logs import LogControl
from runtime.types import InferRequest, RequestedOutput, SharedInput, SharedMemoryRef

log = logging.getLogger("runtime.engine_host")


def error_reply(call_id: Any, exc: BaseException) -> Message:
    """{"id", "error": {"code", "message"}}: what runtime.ipc.Caller raises again as RuntimeServingError."""
    if isinstance(exc, RuntimeServingError):
        return {"id": call_id, "error": {"code": exc.code.value, "message": exc.message}}
    return {"id": call_id, "error": {"code": Code.INTERNAL.value, "message": f"internal error: {type(exc).__name__}: {exc}"}}


class Session:
    """One front end's connection: its slabs, its running infers, the response blocks it still holds."""

    def __init__(self, host: EngineHost, channel: Channel, index: int, requests: Slab, responses: Slab) -> None:
        self.host = host
        self.channel = channel
        self.index = index
        self.requests = requests
        self.responses = responses
        self.tasks: dict[int, asyncio.Task[None]] = {}  # ticket -> running infer
        self.held: dict[int, list[int]] = {}  # ticket -> response-slab offsets not yet released
        # The registry's generation as this front end's catalogue checks it (runtime/catalogue.py).
        offset = responses.allocate(8)
        if offset is None:
            raise ValueError("the response slab has no room for the catalogue's generation counter")
        self.generation_offset = offset
        self.generation = responses.view(offset, 8).cast("q")
        self.generation[0] = host.generation

    def reply(self, message: Message) -> None:
        try:
            self.channel.send_nowait(message)
        except ChannelClosed:
            pass

    async def run(self) -> None:
        """Serve the channel until it closes. Frames are handled in its read callback (Channel.consume):
        no task wake-up between the socket and the infers a read brings."""
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_closed(exc: BaseException) -> None:
            if not closed.done():
                closed.set_result(None)

        try:
            self.channel.consume(self.on_messages, on_closed)
            await closed
        finally:
            self.close()

    def on_messages(self, messages: list[Message]) -> None:
        for message in messages:
            op = message.get("op")
            if op == "infer":
                self.start_infer(message)
            elif op == "release":
                self.release(message.get("ticket"))
            elif op == "cancel":
                self.cancel(message.get("ticket"))
            elif op == "refused":
                self.host.count_refused(message)
            else:
                # Each call on its own task (a load takes seconds): replies carry their ids, so their
                # order does not matter, and nothing holds up this front end's infers.
                self.host.spawn(self.call(message))

    async def call(self, message: Message) -> None:
        call_id = message.get("id")
        try:
            result = await self.host.dispatch(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, RuntimeServingError):
                log.exception("ipc op %r failed", message.get("op"))
            self.reply(error_reply(call_id, exc))
            return
        self.reply({"id": call_id, "result": result})

    # ---- inference ------------------------------------------------------------------------------

    def start_infer(self, message: Message) -> None:
        ticket = message["ticket"]
        task = asyncio.get_running_loop().create_task(self.infer(message, ticket))
        self.tasks[ticket] = task
        task.add_done_callback(lambda _: self.tasks.pop(ticket, None))

    async def infer(self, message: Message, ticket: int) -> None:
        call_id = message.get("id")
        try:
            inputs = read_tensors(self.requests, message["inputs"], copy=False)
            wanted = message.get("outputs")
            shared = message.get("shared_inputs")
            request = InferRequest(
                model_name=message["model"],
                model_version=message["version"],
                inputs=inputs,
                requested_outputs=None if wanted is None else [requested_output(*w) for w in wanted],
                id=message.get("request_id", ""),
                parameters=message.get("parameters") or {},
                deadline=message.get("deadline"),
                protocol=message.get("protocol", ""),
                shared_inputs=None if not shared else {name: shared_input(*s) for name, s in shared.items()},
                trace_parent=message.get("trace_parent") or "",
            )
            response = await self.host.engine.infer(request)
            # Outputs written into the client's shared memory travel as their datatype and shape only.
            in_shared_memory = [o.name for o in request.requested_outputs or () if o.shared_memory is not None]
            written = write_tensors(self.responses, response.outputs, placeholders=in_shared_memory)
            if written is None:
                raise Unavailable(
                    f"model {request.model_name!r}: the outputs do not fit in what is free of the front end's "
                    f"{self.responses.size}-byte response slab (--worker-slab-bytes); retry later"
                )
        except asyncio.CancelledError:
            return  # the front end has stopped waiting: no reply
        except Exception as exc:
            if not isinstance(exc, RuntimeServingError):
                log.exception("infer failed")
            self.reply(error_reply(call_id, exc))
            return
        refs, offsets = written
        self.held[ticket] = offsets
        self.reply(
            {
                "id": call_id,
                "outputs": refs,
                "model_name": response.model_name,
                "model_version": response.model_version,
                "request_id": response.id,
            }
        )

    def release(self, ticket: Any) -> None:
        for offset in self.held.pop(ticket, ()):
            self.responses.free(offset)

    def cancel(self, ticket: Any) -> None:
        task = self.tasks.get(ticket)
        if task is not None and not task.done():
            task.cancel()  # leaves the queue as a local cancel does
        else:
            self.release(ticket)  # it had answered, but the front end gave up before reading the answer

    def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        self.tasks.clear()
        self.held.clear()
        self.generation.release()
        self.requests.close()
        self.responses.close()


def requested_output(name: str, binary: bool | None, classification: int, place: list[Any] | None) -> RequestedOutput:
    """The inverse of frontend.output_descriptor."""
    memory = None if place is None else SharedMemoryRef(place[0], place[1], place[2])
    return RequestedOutput(name, binary, classification, memory)


def shared_input(datatype: str, shape: list[int], region: str, byte_size: int, offset: int) -> SharedInput:
    """The inverse of frontend.shared_inputs_descriptor."""
    return SharedInput(datatype, tuple(shape), SharedMemoryRef(region, byte_size, offset))


class EngineHost:
    """The ops the front ends call, on the engine and admin of this process."""

    def __init__(self, engine: Engine, admin: Admin, traces: TraceSettingsApi, logs: LogControl) -> None:
        self.engine = engine
        self.admin = admin
        self.traces = traces  # the trace extension's settings: this process makes the spans
        self.logs = logs  # this process's logging; a change through any front end reaches every process
        self.sessions: set[Session] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.generation = 0  # of the registry: bumped by every change to what serves
        self._publish_pending = False
        engine.registry.listeners.append(self.registry_changed)
        self._ops: dict[str, Callable[[Message], Awaitable[Any]]] = {
            "engine.live": lambda m: engine.live(),
            "engine.ready": lambda m: engine.ready(),
            "engine.model_ready": lambda m: engine.model_ready(m["name"], m.get("version", ""), strict=m.get("strict", False)),
            "engine.server_metadata": lambda m: engine.server_metadata(),
            "engine.model_metadata": self._model_metadata,
            "engine.model_config": self._model_config,
            "engine.statistics": self._statistics,
            "engine.system_shm_register": lambda m: engine.system_shm_register(
                m["name"], m["key"], m["offset"], m["byte_size"]
            ),
            "engine.system_shm_status": self._system_shm_status,
            "engine.system_shm_unregister": lambda m: engine.system_shm_unregister(m.get("name", "")),
            "engine.cuda_shm_register": lambda m: engine.cuda_shm_register(
                m["name"], base64.b64decode(m["raw_handle"]), m["device_id"], m["byte_size"]
            ),
            "engine.cuda_shm_status": self._cuda_shm_status,
            "engine.cuda_shm_unregister": lambda m: engine.cuda_shm_unregister(m.get("name", "")),
            "engine.trace_settings": lambda m: self.traces.trace_settings(m.get("model", "")),
            "engine.trace_update": lambda m: self.traces.update_trace_settings(m.get("model", ""), m.get("changes") or {}),
            "engine.log_update": self._log_update,
            "admin.index": self._index,
            "admin.load": self._load,
            "admin.unload": lambda m: admin.unload(m["name"], m.get("parameters") or {}),
            "admin.rollback": lambda m: admin.rollback(m["name"]),
            "admin.traffic": lambda m: admin.traffic(m["name"], m.get("weights")),
            "admin.labels": lambda m: admin.labels(m["name"], m.get("labels")),
        }

    # ---- the front ends' catalogue (runtime/catalogue.py) -------------------------------------

    def registry_changed(self) -> None:
        """Synchronously with the change: every front end's catalogue is stale from here on (they ask the
        engine) until the new document, built on a later loop turn, reaches them."""
        self.generation += 1
        for session in self.sessions:
            session.generation[0] = self.generation
        if not self._publish_pending:
            self._publish_pending = True
            self.spawn(self._publish())

    async def _publish(self) -> None:
        self._publish_pending = False
        document = await catalogue.build(self.engine, self.generation)
        for session in list(self.sessions):
            session.reply({"op": "catalogue", "document": document})

    def count_refused(self, message: Message) -> None:
        """A front end refused a request against its catalogue's schema: the engine counts it."""
        request = InferRequest(
            model_name=str(message.get("model", "")),
            model_version=str(message.get("version", "")),
            inputs={},
            protocol=str(message.get("protocol", "")),
        )
        self.engine.count_refused(request, InvalidInput("refused by the front end"), float(message.get("seconds", 0.0)))

    async def dispatch(self, message: Message) -> Any:
        op = message.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            raise RuntimeServingError(f"unknown ipc op {op!r}", Code.INTERNAL)
        return await handler(message)

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _model_metadata(self, m: Message) -> Any:
        return dataclasses.asdict(await self.engine.model_metadata(m["name"], m.get("version", "")))

    async def _model_config(self, m: Message) -> Any:
        return config_to_json(await self.engine.model_config(m["name"], m.get("version", "")))

    async def _statistics(self, m: Message) -> Any:
        return [dataclasses.asdict(s) for s in await self.engine.statistics(m.get("name", ""), m.get("version", ""))]

    async def _system_shm_status(self, m: Message) -> Any:
        return [dataclasses.asdict(s) for s in await self.engine.system_shm_status(m.get("name", ""))]

    async def _cuda_shm_status(self, m: Message) -> Any:
        return [dataclasses.asdict(s) for s in await self.engine.cuda_shm_status(m.get("name", ""))]

    async def _log_update(self, m: Message) -> Any:
        """Apply a logging change here, then in every front end (the notice goes out before the reply)."""
        changes = m.get("changes") or {}
        settings = self.logs.update(changes)
        for session in list(self.sessions):
            session.reply({"op": "log_settings", "changes": changes})
        return settings

    async def _index(self, m: Message) -> Any:
        return [dataclasses.asdict(row) for row in await self.admin.index(bool(m.get("ready", False)))]

    async def _load(self, m: Message) -> Any:
        parameters: dict[str, Any] = dict(m.get("parameters") or {})
        for key in m.get("binary_keys") or ():  # bytes travel as base64 text
            parameters[key] = base64.b64decode(parameters[key])
        return await self.admin.load(m["name"], parameters, binary_files=bool(m.get("binary_files", False)))

    # ---- channels -------------------------------------------------------------------------------

    async def on_channel(self, channel: Channel) -> None:
        """Handshake (hello + the two slab fds), then serve the front end until its channel closes."""
        messages = await channel.receive_many()
        hello = messages[0]
        fds, channel.received_fds[:] = list(channel.received_fds), []
        if hello.get("op") != "hello" or len(fds) != 2 or len(messages) != 1:
            log.error("a front end's channel did not start with a hello and two slabs; closing it")
            _close_fds(fds)
            return
        try:
            requests = Slab.attach(fds[0], int(hello["request_slab_bytes"]))
        except (ValueError, OSError, KeyError) as exc:
            log.error("cannot map a front end's request slab: %s", exc)
            _close_fds(fds)
            return
        try:
            responses = Slab.attach(fds[1], int(hello["response_slab_bytes"]))
        except (ValueError, OSError, KeyError) as exc:
            log.error("cannot map a front end's response slab: %s", exc)
            requests.close()
            _close_fds(fds[1:])
            return
        try:
            session = Session(self, channel, int(hello.get("index", -1)), requests, responses)
        except ValueError as exc:
            log.error("a front end's slabs are unusable: %s", exc)
            requests.close()
            responses.close()
            return
        self.sessions.add(session)
        log.info("front end %d connected", session.index)
        try:
            welcome = {"pid": os.getpid(), "generation_offset": session.generation_offset}
            session.reply({"id": hello.get("id"), "result": welcome})
            session.reply({"op": "catalogue", "document": await catalogue.build(self.engine, self.generation)})
            await session.run()
        except ChannelClosed:
            pass
        finally:
            self.sessions.discard(session)
            session.close()
            log.info("front end %d disconnected", session.index)

    def in_flight(self) -> int:
        return sum(len(session.tasks) for session in self.sessions)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


async def serve_engine(settings: Settings, address: str) -> int:
    """The engine process: load the models, serve the metrics port and the front ends' channels until SIGTERM."""
    from runtime.app import (
        _exit_now,
        begin_drain,
        close_core,
        log_control_for,
        metrics_endpoint,
        start_core,
        start_poller,
        start_servers,
    )

    log.info("model-runtime %s engine process; codec implementation: %s", __version__, codec.IMPLEMENTATION)
    core = await start_core(settings)
    registry, engine = core.registry, core.engine
    traces = core.tracing.control if core.tracing is not None else control_for(settings)
    host = EngineHost(engine, core.admin, traces, log_control_for(settings))
    poller = start_poller(registry, settings)
    metrics_server = metrics_endpoint(settings, core)
    ready = await start_servers({"metrics": metrics_server})
    server = await ChannelServer.listen(address, host.on_channel)
    sys.stdout.write("READY " + json.dumps(ready) + "\n")
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()

    started, deadline = begin_drain(settings, "engine shutting down")
    engine.stop_accepting()
    if poller is not None:
        poller.cancel()
    # The front ends drain first (the supervisor stops them before this process); what they still
    # wait for gets until the deadline.
    while host.in_flight() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    drained = not host.in_flight()
    await server.close()
    closed = await close_core(registry, metrics_server, deadline)
    if core.tracing is not None:
        await core.tracing.flush(deadline)  # the spans still buffered for the exporter
    status = 0 if closed and drained else 1
    if status:
        log.error("grace period (%.0fs) over with requests unfinished; they were cancelled", settings.exit_timeout_secs)
    else:
        log.info("engine stopped cleanly in %.2fs", time.monotonic() - started)
    _exit_now(status)


def run_engine(settings: Settings, address: str) -> int:
    """Process main of the engine (`python -m runtime _engine`): logging, signals, READY on stdout."""
    from runtime.app import configure_logging, run_coroutine

    configure_logging(settings)
    # The supervisor forwards SIGTERM in order (front ends first); a terminal's ^C reaches the whole
    # group and must not stop the engine under front ends that are still draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return run_coroutine(settings, serve_engine(settings, address))

"""Settings -> registry, engine, servers; signals; graceful stop."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Coroutine, NoReturn, Protocol

from runtime import __version__, codec
from runtime.config import Settings, worker_count
from runtime.cache import ResponseCache
from runtime.engine import Engine, EngineApi
from runtime.repository.registry import ModelRegistry
from runtime.repository.store import RepositoryStore
from runtime.tracing import Tracing, control_for, start_tracing
from runtime.tracing.control import TraceSettingsApi
from runtime.tracing.logs import LogControl, LogSettingsApi



class Server(Protocol):
    """What start_servers needs of an HTTP, gRPC or metrics server."""

    @property
    def port(self) -> int: ...

    async def start(self) -> None: ...


if TYPE_CHECKING:
    from runtime.admin import Admin, AdminApi
    from runtime.monitoring.observer import MetricsObserver
    from runtime.server.asgi import AsgiServer
    from runtime.server.grpc.server import GrpcServer

log = logging.getLogger("runtime")

# The process is gone at most this long after --exit-timeout-secs, whatever is still running: a
# batch inside onnxruntime cannot be interrupted, and its thread (or a session's teardown) would
# otherwise hold the exit until it ends.
EXIT_SLACK_S = 1.0


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)  # structured fields, e.g. the sampled request log
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


async def load_models(registry: ModelRegistry, settings: Settings) -> None:
    if settings.model_control_mode == "explicit" and "*" not in settings.load_model:
        for name in settings.load_model:
            await registry.load_model(name)
    else:
        await registry.load_all()


def start_poller(registry: ModelRegistry, settings: Settings) -> asyncio.Task[None] | None:
    if settings.model_control_mode != "poll":
        return None
    from runtime.repository.poller import RepositoryPoller

    poller = RepositoryPoller(registry, settings.repository_poll_secs, settings.repository_poll_quiet_secs)
    poller.prime()
    task = asyncio.get_running_loop().create_task(poller.run_forever(), name="repository-poller")
    task.add_done_callback(_log_poller_end)
    return task


def _log_poller_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("poller stopped: %s", task.exception())


@dataclass
class Core:
    """What serves requests in the process that holds the models (the only one, or the engine process)."""

    registry: ModelRegistry
    engine: Engine
    admin: Admin
    observer: MetricsObserver | None
    tracing: Tracing | None = None


async def start_core(settings: Settings) -> Core:
    """Write the examples if asked, load the models, and build the engine and admin over them."""
    from runtime import monitoring
    from runtime.admin import Admin

    if settings.model_repository is None:
        from runtime.examples import write_example_repository

        write_example_repository(settings.example_repository)
        log.info("serving the built-in examples from %s", settings.example_repository)
    observer = monitoring.observer_for(settings)
    tracing = start_tracing(settings, observer)
    reporting = tracing.wrap(observer)  # the metrics observer, inside the tracing one when tracing is on
    registry = ModelRegistry(RepositoryStore(settings.repository), settings, observer=reporting)
    await load_models(registry, settings)
    from runtime.shm import RegionTable

    engine = Engine(
        registry,
        observer=reporting,
        shared_memory=RegionTable(allowed=settings.allow_client_shm, bind_system=settings.shm_io_binding),
        response_cache=ResponseCache.configured(settings.cache_config),
    )
    return Core(registry, engine, Admin(registry, settings), observer, tracing)


def metrics_endpoint(settings: Settings, core: Core) -> AsgiServer | None:
    from runtime import monitoring
    from runtime.server import metrics
    from runtime.server.asgi import AsgiServer

    if not settings.allow_metrics:
        return None
    return AsgiServer(
        metrics.build_app(monitoring.build_registry(core.registry, core.observer)),
        settings.metrics_address,
        settings.metrics_port,
        settings,
        tls=False,  # like Triton's: scrapers read plain HTTP on a port that carries no requests
    )


def log_control_for(settings: Settings) -> LogControl:
    """This process's logging settings, as configure_logging set them up (the logging extension's)."""
    return LogControl(settings.log_format, JsonFormatter)


def protocol_servers(
    settings: Settings,
    engine: EngineApi,
    admin: AdminApi,
    *,
    reuse_port: bool = False,
    trace_control: TraceSettingsApi | None = None,
    log_control: LogSettingsApi | None = None,
) -> tuple[AsgiServer | None, GrpcServer | None, AsgiServer | None]:
    """The HTTP, gRPC and admin-port servers over an engine and admin (local, or a front end's remote ones)."""
    from starlette.applications import Starlette

    from runtime.server import logging_ext, repository, shm, stats, trace
    from runtime.server.asgi import AsgiServer
    from runtime.server.grpc.server import GrpcServer
    from runtime.server.http.app import http_server, openapi_route

    # With --admin-port the admin API lives only there (HTTP), never on the public ports.
    public_admin = settings.admin_port is None
    # Trace settings are those of the process that makes the spans (a front end passes its link to the
    # engine's); logging settings are every process's (a front end passes a link that changes them all).
    traces = trace_control if trace_control is not None else control_for(settings)
    logs = log_control if log_control is not None else log_control_for(settings)
    http_extensions = [
        *trace.http_routes(engine, traces, settings),
        *logging_ext.http_routes(logs, settings),
        *stats.http_routes(engine),
        *shm.http_routes(engine, settings),
        *(repository.http_routes(admin, settings) if public_admin else []),
        openapi_route(),
    ]
    grpc_extensions = [stats.grpc_handler(engine), shm.grpc_handler(engine), *([repository.grpc_handler(admin)] if public_admin else [])]
    grpc_extensions += [trace.grpc_handler(engine, traces, settings), logging_ext.grpc_handler(logs, settings)]
    http = http_server(engine, settings, http_extensions, reuse_port=reuse_port) if settings.allow_http else None
    grpc_server = GrpcServer(engine, settings, grpc_extensions, reuse_port=reuse_port) if settings.allow_grpc else None
    admin_server = (
        AsgiServer(
            Starlette(routes=repository.http_routes(admin, settings)),
            settings.admin_address,
            settings.admin_port,
            settings,
            reuse_port=reuse_port,
        )
        if settings.admin_port is not None
        else None
    )
    return http, grpc_server, admin_server


async def start_servers(servers: dict[str, Server | None]) -> dict[str, int | None]:
    """Start every server given; their bound ports by name (None where a server is off)."""
    for server in servers.values():
        if server is not None:
            await server.start()
    return {name: server.port if server is not None else None for name, server in servers.items()}


def begin_drain(settings: Settings, what: str) -> tuple[float, float]:
    """Log the drain and arm the watchdog: (started, deadline), one deadline for every step that follows."""
    log.info("%s: no new requests; draining for up to %.0fs", what, settings.exit_timeout_secs)
    started = time.monotonic()
    deadline = started + settings.exit_timeout_secs
    # The watchdog ends the process if a step overruns the deadline anyway.
    _start_watchdog(deadline + EXIT_SLACK_S)
    return started, deadline


async def stop_protocol_servers(
    http: AsgiServer | None, grpc_server: GrpcServer | None, admin_server: AsgiServer | None, deadline: float
) -> bool:
    """gRPC health says NOT_SERVING; each server stops accepting at once, then waits (to the deadline)
    for what it accepted. True if everything accepted was answered."""
    if grpc_server is not None:
        await grpc_server.set_not_serving()
    stopping = [server.stop(deadline) for server in (http, admin_server, grpc_server) if server is not None]
    return all(await asyncio.gather(*stopping))


async def close_core(registry: ModelRegistry, metrics_server: AsgiServer | None, deadline: float) -> bool:
    """Drain and free every model version, then stop the metrics port. True if the registry closed in time."""
    closing = asyncio.get_running_loop().create_task(registry.close(), name="registry-close")
    # Not wait_for: cancelling close() part-way would join instance threads on the loop, blocking
    # it until a running batch ends.
    closed, _ = await asyncio.wait({closing}, timeout=max(0.1, deadline - time.monotonic()))
    if metrics_server is not None:
        await metrics_server.stop(max(deadline, time.monotonic() + 0.2))
    return bool(closed)


async def serve(settings: Settings) -> int:
    log.info("model-runtime %s; codec implementation: %s", __version__, codec.IMPLEMENTATION)
    core = await start_core(settings)
    http, grpc_server, admin_server = protocol_servers(
        settings, core.engine, core.admin, trace_control=core.tracing.control if core.tracing else None
    )
    poller = start_poller(core.registry, settings)
    metrics_server = metrics_endpoint(settings, core)
    ports = await start_servers({"admin": admin_server, "http": http, "grpc": grpc_server, "metrics": metrics_server})
    log.info("serving: HTTP %s, gRPC %s, metrics %s", ports["http"], ports["grpc"], ports["metrics"])
    if settings.ports_file is not None:
        write_ports_file(settings.ports_file, ports)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    started, deadline = begin_drain(settings, "shutting down")
    core.engine.stop_accepting()
    if poller is not None:
        poller.cancel()
    drained = await stop_protocol_servers(http, grpc_server, admin_server, deadline)
    closed = await close_core(core.registry, metrics_server, deadline)
    if core.tracing is not None:
        await core.tracing.flush(deadline)
    status = 0 if closed and drained else 1
    if status:
        log.error("grace period (%.0fs) over with requests unfinished; they were cancelled", settings.exit_timeout_secs)
    else:
        log.info("stopped cleanly in %.2fs", time.monotonic() - started)
    # Ended here, not by returning through asyncio.run: its teardown would destroy the gRPC server,
    # whose core stop resets calls still arriving (their clients see CANCELLED instead of retrying on
    # UNAVAILABLE), and the interpreter would wait for a batch still running on an instance thread.
    # The OS closes the connections; every call in flight sees UNAVAILABLE.
    await asyncio.sleep(0.05)  # the requests uvicorn just cancelled write their 503s
    _exit_now(status)


def _exit_now(status: int) -> NoReturn:
    """End the process at once (logs flushed): for when something still running cannot be stopped."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _start_watchdog(at: float) -> None:
    """A daemon thread that ends the process at time.monotonic() `at`, if it is still alive then."""

    def watch() -> None:
        time.sleep(max(0.0, at - time.monotonic()))
        log.error("shutdown overran --exit-timeout-secs; exiting now")
        _exit_now(1)

    threading.Thread(target=watch, name="exit-watchdog", daemon=True).start()


def write_ports_file(path: Path, ports: dict[str, int | None]) -> None:
    """Written atomically, so a reader never sees half a file."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(ports))
    partial.replace(path)


def run(settings: Settings) -> int:
    configure_logging(settings)
    if worker_count(settings) > 1:
        # --workers N: this process only supervises an engine process and N front ends.
        from runtime.supervisor import supervise

        return supervise(settings)
    return run_coroutine(settings, serve(settings))


def run_coroutine(settings: Settings, main: Coroutine[Any, Any, int]) -> int:
    """asyncio.run, or uvloop's, as --event-loop says: every process that serves runs its main this way."""
    if settings.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if settings.event_loop == "uvloop":
                raise
        else:
            return int(uvloop.run(main))
    return asyncio.run(main)

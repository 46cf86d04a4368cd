"""--workers N (N > 1): the parent process. It serves nothing itself: it reserves the public ports,
starts one engine process and then N front-end processes, writes the ports file once all of them are
ready, restarts a front end that dies, stops everything when the engine dies, and on SIGTERM/SIGINT
stops the front ends (they drain) before the engine.

Children are fresh interpreters (`python -m runtime _engine|_frontend`, subprocess.Popen: no fork
after threads, ONNX Runtime or gRPC exist), given the settings as JSON in MODEL_RUNTIME_CHILD_SETTINGS.
Each reports readiness with one line `READY <json>` on its stdout, a pipe read here; their stderr
(the logs) is this process's. The parent runs no event loop and creates no gRPC object: a plain loop
polls the children every POLL_S.

Ports: for the HTTP, gRPC and admin listeners the parent binds a socket with SO_REUSEPORT (bound, never
listening, so the kernel gives it no connection) and holds it for its whole life: a port 0 becomes a
concrete number that stays ours while front ends come and go, and every front end binds that number
with SO_REUSEPORT too; the kernel spreads new connections (not requests) over the listening ones. An
inherited listening socket would do the same, but SO_REUSEPORT gives each front end its own accept
queue (no thundering herd, no accept lock) and, when one dies, only the connections it had accepted
are lost: the kernel stops routing to its queue. The metrics port is the engine's alone.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from runtime.config import Settings, settings_to_json, worker_count

log = logging.getLogger("runtime.supervisor")

CHILD_SETTINGS_ENV = "MODEL_RUNTIME_CHILD_SETTINGS"
PARENT_PID_ENV = "MODEL_RUNTIME_PARENT_PID"
READY_PREFIX = b"READY "
POLL_S = 0.05
# A front end that dies before it is ready is restarted after a delay that doubles up to this
# (a broken one must not spin); one that was serving is restarted at once.
MAX_RESTART_DELAY_S = 5.0
# After the engine died: how long the front ends get to end by themselves on SIGTERM.
ORPHAN_STOP_S = 2.0
# The parent is gone this long after --exit-timeout-secs at the latest (app.EXIT_SLACK_S).
EXIT_SLACK_S = 1.0


def encode_address(address: str) -> str:
    """A unix socket address as argv can carry it: an abstract one ("\\0name") is spelled "@name"."""
    return "@" + address[1:] if address.startswith("\0") else address


def decode_address(text: str) -> str:
    return "\0" + text[1:] if text.startswith("@") else text


def write_ports_file(path: Path, ports: dict[str, int | None]) -> None:
    """Written atomically, as app.write_ports_file does, so a reader never sees half a file."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(ports))
    partial.replace(path)


@dataclass
class Child:
    role: str  # "engine" or "frontend"
    index: int  # the front end's index; -1 for the engine
    process: subprocess.Popen[bytes]
    started: float
    ready: threading.Event = field(default_factory=threading.Event)
    info: dict[str, Any] = field(default_factory=dict)
    reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return "engine" if self.role == "engine" else f"front end {self.index}"


def reserve_port(address: str, port: int) -> socket.socket:
    """A socket bound to (address, port) with SO_REUSEPORT and not listening: it holds the number."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEPORT alone: without SO_REUSEADDR on this socket, a foreign server (which sets
        # SO_REUSEADDR only, as most do) cannot bind the port either while it is not listening.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def reserve_ports(settings: Settings) -> dict[str, socket.socket]:
    """The front ends' listeners ("http", "grpc", "admin"), each reserved at its address."""
    wanted: list[tuple[str, str, int]] = []
    if settings.allow_http:
        wanted.append(("http", settings.http_address, settings.http_port))
    if settings.allow_grpc:
        wanted.append(("grpc", settings.grpc_address, settings.grpc_port))
    if settings.admin_port is not None:
        wanted.append(("admin", settings.admin_address, settings.admin_port))
    reserved: dict[str, socket.socket] = {}
    try:
        for name, address, port in wanted:
            try:
                reserved[name] = reserve_port(address, port)
            except OSError as exc:
                raise OSError(f"cannot bind the {name} port {address}:{port}: {exc}") from exc
    except OSError:
        for sock in reserved.values():
            sock.close()
        raise
    return reserved


def child_settings(settings: Settings, ports: dict[str, int]) -> Settings:
    """What the children run with: the reserved ports made concrete; the ports file is the parent's."""
    changes: dict[str, Any] = {"ports_file": None}
    if "http" in ports:
        changes["http_port"] = ports["http"]
    if "grpc" in ports:
        changes["grpc_port"] = ports["grpc"]
    if "admin" in ports:
        changes["admin_port"] = ports["admin"]
    return dataclasses.replace(settings, **changes)


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers = worker_count(settings)
        self.address = f"\0model-runtime-{os.getpid()}-{secrets.token_hex(6)}"
        self.stop_requested = threading.Event()
        self.wake = threading.Event()
        self.engine: Child | None = None
        self.frontends: dict[int, Child] = {}
        self.reserved: dict[str, socket.socket] = {}
        self._env: dict[str, str] = {}
        self._failures: dict[int, int] = {}  # index -> consecutive deaths before ready
        self._restart_at: dict[int, float] = {}
        self._replacing: set[int] = set()
        self._stdout_lock = threading.Lock()

    # ---- children ----------------------------------------------------------------------------------

    def _spawn(self, role: str, index: int) -> Child:
        command = [sys.executable, "-m", "runtime", "_" + role, "--engine-address", encode_address(self.address)]
        if role == "frontend":
            command += ["--index", str(index)]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=self._env)
        child = Child(role, index, process, time.monotonic())
        child.reader = threading.Thread(target=self._read_stdout, args=(child,), name=f"{role}-{index}-stdout", daemon=True)
        child.reader.start()
        log.debug("started %s (pid %d)", child.name, process.pid)
        return child

    def _read_stdout(self, child: Child) -> None:
        """The child's READY line sets child.ready; anything else it prints goes to our stdout."""
        stream = child.process.stdout
        if stream is None:
            return
        for line in iter(stream.readline, b""):
            if not child.ready.is_set() and line.startswith(READY_PREFIX):
                try:
                    info = json.loads(line[len(READY_PREFIX):])
                except ValueError:
                    info = {}
                child.info = info if isinstance(info, dict) else {}
                child.ready.set()
                self.wake.set()
                continue
            with self._stdout_lock:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
        stream.close()
        self.wake.set()

    def _start_frontend(self, index: int) -> None:
        self.frontends[index] = self._spawn("frontend", index)

    # ---- signals ----------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested.set()
        self.wake.set()

    def _wait(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    # ---- the life of the server ----------------------------------------------------------------------

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            self.reserved = reserve_ports(self.settings)
        except OSError as exc:
            log.error("%s", exc)
            return 1
        ports = {name: sock.getsockname()[1] for name, sock in self.reserved.items()}
        settings = child_settings(self.settings, ports)
        self._env = {
            **os.environ,
            CHILD_SETTINGS_ENV: settings_to_json(settings),
            PARENT_PID_ENV: str(os.getpid()),
        }
        try:
            status = self._serve(ports)
        finally:
            self._kill_all()
            for sock in self.reserved.values():
                sock.close()
        logging.shutdown()
        return status

    def _serve(self, ports: dict[str, int]) -> int:
        log.info("starting the engine process, then %d front-end processes", self.workers)
        self.engine = self._spawn("engine", -1)
        while not self.engine.ready.is_set():
            if self.engine.process.poll() is not None:
                log.error("engine process exited with status %s before it was ready; stopping", self.engine.process.returncode)
                return 1
            if self.stop_requested.is_set():
                return self._shutdown()
            self._wait(POLL_S)
        for index in range(self.workers):
            self._start_frontend(index)
        while not all(child.ready.is_set() for child in self.frontends.values()):
            if (status := self._engine_gone()) is not None:
                return status
            for child in self.frontends.values():
                if child.process.poll() is not None:
                    log.error(
                        "%s exited with status %s before it was ready; stopping", child.name, child.process.returncode
                    )
                    self._shutdown()
                    return 1
            if self.stop_requested.is_set():
                return self._shutdown()
            self._wait(POLL_S)
        metrics = self.engine.info.get("metrics")
        if metrics is None and self.settings.allow_metrics and self.settings.metrics_port:
            metrics = self.settings.metrics_port
        served = {
            "admin": ports.get("admin"),
            "http": ports.get("http"),
            "grpc": ports.get("grpc"),
            "metrics": metrics if self.settings.allow_metrics else None,
        }
        log.info(
            "serving: HTTP %s, gRPC %s, metrics %s; engine pid %d, %d front ends (pids %s)",
            served["http"], served["grpc"], served["metrics"], self.engine.process.pid, self.workers,
            ", ".join(str(child.process.pid) for child in self.frontends.values()),
        )
        if self.settings.ports_file is not None:
            write_ports_file(self.settings.ports_file, served)
        while not self.stop_requested.is_set():
            if (status := self._engine_gone()) is not None:
                return status
            self._supervise_frontends()
            self._wait(POLL_S)
        return self._shutdown()

    def _engine_gone(self) -> int | None:
        """When the engine has exited: log it, stop the front ends, and the parent's exit status."""
        assert self.engine is not None
        returncode = self.engine.process.poll()
        if returncode is None:
            return None
        log.error("engine process exited with status %s; stopping", returncode)
        self._signal_frontends(signal.SIGTERM)
        self._reap(list(self.frontends.values()), time.monotonic() + ORPHAN_STOP_S)
        return 1

    def _supervise_frontends(self) -> None:
        """Restart each front end that exited: at once when it had been serving, after a growing
        delay when it died before it was ready (a front end that cannot start must not spin)."""
        now = time.monotonic()
        for index, child in list(self.frontends.items()):
            if index in self._restart_at:
                if now >= self._restart_at[index]:
                    del self._restart_at[index]
                    self._start_frontend(index)
                continue
            returncode = child.process.poll()
            if returncode is None:
                if index in self._replacing and child.ready.is_set():
                    self._replacing.discard(index)
                    self._failures.pop(index, None)
                    log.info("front end %d replaced: pid %d is serving", index, child.process.pid)
                continue
            failures = 0 if child.ready.is_set() else self._failures.get(index, 0) + 1
            self._failures[index] = failures
            self._replacing.add(index)
            delay = min(MAX_RESTART_DELAY_S, 0.25 * 2 ** (failures - 1)) if failures else 0.0
            log.warning(
                "front end %d (pid %d) exited with status %s; restarting it%s",
                index, child.process.pid, returncode, f" in {delay:.2f}s" if delay else "",
            )
            if delay:
                self._restart_at[index] = now + delay
            else:
                self._start_frontend(index)

    def _shutdown(self) -> int:
        """Front ends first (SIGTERM: they stop accepting and drain), then the engine; stragglers are
        killed so that this process is gone by --exit-timeout-secs + EXIT_SLACK_S."""
        started = time.monotonic()
        deadline = started + self.settings.exit_timeout_secs
        log.info("shutting down: front ends drain for up to %.0fs, then the engine stops", self.settings.exit_timeout_secs)
        self._restart_at.clear()
        self._signal_frontends(signal.SIGTERM)
        clean = self._reap(list(self.frontends.values()), deadline + 0.6 * EXIT_SLACK_S)
        if self.engine is not None:
            if self.engine.process.poll() is None:
                self.engine.process.send_signal(signal.SIGTERM)
            clean = self._reap([self.engine], deadline + 0.9 * EXIT_SLACK_S) and clean
        if clean:
            log.info("stopped cleanly in %.2fs", time.monotonic() - started)
        else:
            log.error("not every process stopped cleanly within --exit-timeout-secs (%.0fs)", self.settings.exit_timeout_secs)
        return 0 if clean else 1

    def _signal_frontends(self, signum: int) -> None:
        for child in self.frontends.values():
            if child.process.poll() is None:
                try:
                    child.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _reap(self, children: list[Child], until: float) -> bool:
        """Wait for `children` to exit until time.monotonic() `until`, then SIGKILL the rest.
        True when each one exited by itself with status 0."""
        clean = True
        for child in children:
            try:
                returncode = child.process.wait(max(0.0, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s (pid %d) did not stop in time; killing it", child.name, child.process.pid)
                child.process.kill()
                child.process.wait()
                clean = False
                continue
            clean = clean and returncode == 0
        for child in children:
            if child.reader is not None:
                child.reader.join(0.2)
        return clean

    def _kill_all(self) -> None:
        for child in [*self.frontends.values(), *([self.engine] if self.engine else [])]:
            if child.process.poll() is None:
                child.process.kill()
                child.process.wait()


def supervise(settings: Settings) -> int:
    """The parent's main: returns the exit status."""
    return Supervisor(settings).run()

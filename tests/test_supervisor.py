"""--workers N: the supervisor, one engine process and N front ends, as real processes on 127.0.0.1."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from runtime.config import Settings, from_sources, settings_from_json, settings_to_json, worker_count
from runtime.examples import save_model
from runtime.supervisor import child_settings, decode_address, encode_address, reserve_ports
from tests.models import build_identity
from tests.monitoring.scrape import eventually, scrape
from tests.serving import RunningServer, running_server, start_server

WORKERS = 3
WINDOW_US = 20_000
BATCHED = f"max_batch_size: 16\ndynamic_batching {{ max_queue_delay_microseconds: {WINDOW_US} }}\n"
SLOW_WINDOW = "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 1500000 }\n"


def build_repo(root: Path) -> Path:
    save_model(build_identity("FP32"), root, "batched", config_pbtxt=BATCHED)
    save_model(build_identity("FP32"), root, "counted", config_pbtxt=BATCHED)
    save_model(build_identity("FP32"), root, "slow_window", config_pbtxt=SLOW_WINDOW)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("supervised") / "repo")


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(repo, tmp_path_factory.mktemp("srv"), workers=WORKERS) as running:
        yield running


# ---- helpers -------------------------------------------------------------------------------------------

BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})


class Connection:
    """One HTTP/1.1 keep-alive connection of its own (http.client): the kernel hands each new
    connection to one front end, so separate connections are what spread over the workers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.connect()

    def local_port(self) -> int:
        assert self.conn.sock is not None
        port: int = self.conn.sock.getsockname()[1]
        return port

    def get(self, path: str) -> int:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        response.read()
        return response.status

    def infer(self, model: str = "batched") -> dict[str, Any]:
        self.conn.request("POST", f"/v2/models/{model}/infer", BODY, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        answer: dict[str, Any] = json.loads(body)
        return answer

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.conn.connect()

    def close(self) -> None:
        self.conn.close()


def client_ports_held(pid: int, server_port: int) -> set[int]:
    """Client-side ports of the 127.0.0.1 TCP connections to `server_port` that process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    held = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(local.split(":")[1], 16) == server_port:
            held.add(int(remote.split(":")[1], 16))
    return held


def stats(server: RunningServer, model: str) -> tuple[int, int]:
    entry = httpclient.InferenceServerClient(server.http_url).get_inference_statistics(model)["model_stats"][0]
    return int(entry["inference_count"]), int(entry["execution_count"])


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_exit(process: Any, timeout_s: float) -> int:
    code: int = process.wait(timeout_s)
    return code


# ---- settings and the parent's pieces, without processes -------------------------------------------------


def test_workers_setting_auto_and_default() -> None:
    assert Settings().workers == 1 and worker_count(Settings()) == 1
    auto = from_sources({"workers": "auto"})
    assert auto.workers == 0
    cores = len(os.sched_getaffinity(0))
    assert worker_count(auto) == max(1, min(cores, 8) - 1)
    assert worker_count(from_sources({"workers": "5"})) == 5
    with pytest.raises(ValueError, match="workers: 65 is out of range"):
        from_sources({"workers": "65"})


def test_children_get_the_settings_as_json_with_the_reserved_ports(tmp_path: Path) -> None:
    settings = from_sources({"model_repository": str(tmp_path), "http_port": "0", "grpc_port": "0",
                             "http_address": "127.0.0.1", "grpc_address": "127.0.0.1", "workers": "3",
                             "ports_file": str(tmp_path / "ports.json")})
    reserved = reserve_ports(settings)
    try:
        ports = {name: sock.getsockname()[1] for name, sock in reserved.items()}
        assert set(ports) == {"http", "grpc"} and all(ports.values())
        # A second socket with SO_REUSEPORT binds the reserved port (as every front end does) ...
        shared = socket.socket()
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind(("127.0.0.1", ports["http"]))
        shared.close()
        # ... one without it does not: the number stays ours.
        with pytest.raises(OSError):
            socket.create_server(("127.0.0.1", ports["http"]))
        child = settings_from_json(settings_to_json(child_settings(settings, ports)))
    finally:
        for sock in reserved.values():
            sock.close()
    assert (child.http_port, child.grpc_port, child.ports_file) == (ports["http"], ports["grpc"], None)
    assert child.model_repository == tmp_path and child.workers == 3
    assert decode_address(encode_address("\0model-runtime-1-ab")) == "\0model-runtime-1-ab"


# ---- a running --workers 3 server ----------------------------------------------------------------------


def test_every_front_end_answers_every_connection(server: RunningServer) -> None:
    children = server.children()
    assert len(children["engine"]) == 1 and len(children["frontend"]) == WORKERS
    connections = [Connection(server.http_port) for _ in range(12)]
    try:
        for connection in connections:
            assert connection.get("/v2/health/ready") == 200
            assert connection.infer()["outputs"][0]["data"] == [1, 2, 3, 4]
        held = {pid: client_ports_held(pid, server.http_port) for pid in children["frontend"]}
        ours = {connection.local_port() for connection in connections}
        # Each connection is held by exactly one front end, and more than one front end holds some.
        assert set().union(*held.values()) >= ours
        assert sum(1 for ports in held.values() if ports & ours) >= 2, held
    finally:
        for connection in connections:
            connection.close()
    clients = [grpcclient.InferenceServerClient(server.grpc_url, channel_args=[("grpc.use_local_subchannel_pool", 1)])
               for _ in range(6)]
    for client in clients:
        data = np.arange(4, dtype=np.float32).reshape(1, 4)
        tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(data)
        assert np.array_equal(client.infer("batched", [tensor]).as_numpy("OUTPUT0"), data)
        assert client.is_server_ready() and client.is_model_ready("batched")
        client.close()


def test_requests_through_different_front_ends_share_batches(server: RunningServer) -> None:
    before_rows, before_batches = stats(server, "batched")
    connections = [Connection(server.http_port) for _ in range(16)]
    errors: list[BaseException] = []

    def drive(connection: Connection) -> None:
        try:
            for _ in range(10):
                connection.infer()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for connection in connections:
        connection.close()
    assert not errors, errors
    rows, batches = stats(server, "batched")
    rows, batches = rows - before_rows, batches - before_batches
    assert rows == 160
    # One queue per model version across the workers: 16 concurrent requests, a 20 ms window.
    assert batches <= rows / 3, (rows, batches)


def test_metrics_and_statistics_are_exact_across_workers(server: RunningServer) -> None:
    connections = [Connection(server.http_port) for _ in range(9)]
    # Refused by the front ends' catalogues (runtime/catalogue.py) without reaching the engine, and
    # still counted on the engine's /metrics as a single process counts them.
    invalid = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, 4]}]})
    try:
        for connection in connections:
            for _ in range(7):
                connection.infer("counted")
            for _ in range(2):
                connection.conn.request("POST", "/v2/models/counted/infer", invalid, {"Content-Type": "application/json"})
                response = connection.conn.getresponse()
                assert response.status == 400 and b"datatype INT32" in response.read()
    finally:
        for connection in connections:
            connection.close()
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    for _ in range(5):
        grpc_client.infer("counted", [tensor])
    grpc_client.close()
    rows, _ = stats(server, "counted")
    assert rows == 68
    entry = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("counted")["model_stats"][0]
    assert int(entry["inference_stats"]["success"]["count"]) == 68

    def counted() -> Any:
        samples = scrape(server.metrics_url)
        by_protocol = {
            p: samples.total("model_runtime_requests_total", model="counted", protocol=p, outcome="success")
            for p in ("http", "grpc")
        }
        refused = samples.total("model_runtime_requests_total", model="counted", protocol="http", reason="invalid_input")
        return samples if by_protocol == {"http": 63, "grpc": 5} and refused == 18 else None

    eventually(counted, 10, "exact request counters on /metrics")


def test_a_killed_front_end_fails_only_its_own_connections_and_is_replaced(server: RunningServer) -> None:
    frontends = server.children()["frontend"]
    connections = [Connection(server.http_port) for _ in range(9)]
    for connection in connections:
        connection.infer()
    held = {pid: client_ports_held(pid, server.http_port) for pid in frontends}
    victim = max(frontends, key=lambda pid: len(held[pid] & {c.local_port() for c in connections}))
    victim_index = frontends.index(victim)
    doomed = {i for i, c in enumerate(connections) if c.local_port() in held[victim]}
    assert doomed, held
    failures: dict[int, int] = {}
    seen: list[str] = []
    successes_after: dict[int, int] = {}
    stop = threading.Event()
    killed = threading.Event()

    def drive(i: int, connection: Connection) -> None:
        while not stop.is_set():
            try:
                connection.infer()
            except Exception as exc:  # noqa: BLE001 - counted
                failures[i] = failures.get(i, 0) + 1
                seen.append(f"{i}: {exc!r}")
                # As a client's retry would, after a pause: a connection made while the killed
                # process is still being torn down can land in its closing accept queue.
                time.sleep(0.1)
                connection.reconnect()
                continue
            if killed.is_set():
                successes_after[i] = successes_after.get(i, 0) + 1

    threads = [threading.Thread(target=drive, args=(i, c)) for i, c in enumerate(connections)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    os.kill(victim, signal.SIGKILL)
    killed.set()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(30)
    for connection in connections:
        connection.close()
    assert set(failures) <= doomed, (failures, doomed)
    assert all(count == 1 for count in failures.values()), seen
    assert set(successes_after) == set(range(len(connections))), successes_after  # everyone went on

    def replaced() -> list[int] | None:
        now = server.children()["frontend"]
        return now if len(now) == WORKERS and now[victim_index] != victim else None

    eventually(replaced, 5, "the killed front end's replacement")
    eventually(lambda: f"front end {victim_index} replaced" in server.log(), 60, "the replacement serving")
    assert "exited with status -9; restarting it" in server.log()
    fresh = [Connection(server.http_port) for _ in range(12)]
    try:
        for connection in fresh:
            assert connection.get("/v2/health/ready") == 200
            connection.infer()
    finally:
        for connection in fresh:
            connection.close()


# ---- lifecycle: each test its own server ----------------------------------------------------------------


def test_engine_death_stops_the_server_with_a_clear_log_line(repo: Path, tmp_path: Path) -> None:
    server = start_server(repo, tmp_path / "srv", workers=2)
    try:
        children = server.children()
        os.kill(children["engine"][0], signal.SIGKILL)
        code = wait_exit(server.process, 15)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert code != 0
    assert "ERROR runtime.supervisor: engine process exited with status -9; stopping" in server.log()
    assert not any(alive(pid) for pid in children["frontend"])


def test_sigterm_drains_every_process_within_the_timeout_and_leaves_no_shm(repo: Path, tmp_path: Path) -> None:
    before = shm_entries()
    server = start_server(repo, tmp_path / "srv", ["--exit-timeout-secs", "5"], workers=2)
    children = server.children()
    results: list[int] = []

    def slow_request() -> None:
        connection = Connection(server.http_port)
        try:
            connection.infer("slow_window")
            results.append(200)
        except BaseException:  # noqa: BLE001 - counted
            results.append(0)
        finally:
            connection.close()

    threads = [threading.Thread(target=slow_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the requests sit in the 1.5 s batching window
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = wait_exit(server.process, 10)
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(10)
    assert code == 0, server.log()[-3000:]
    assert elapsed < 5 + 1.0
    assert results == [200] * 4, results
    assert not any(alive(pid) for pid in [*children["engine"], *children["frontend"]])
    assert shm_entries() - before == set()


def test_sigkill_of_the_process_group_leaves_no_process_and_no_shm(repo: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    before = shm_entries()
    work = tmp_path / "srv"
    work.mkdir()
    ports_file = work / "ports.json"
    # Its own process group, so that killpg reaches the supervisor and its children, not pytest.
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--workers", "2", "--model-repository", str(repo),
         "--http-address", "127.0.0.1", "--http-port", "0", "--grpc-address", "127.0.0.1", "--grpc-port", "0",
         "--metrics-address", "127.0.0.1", "--metrics-port", "0", "--ports-file", str(ports_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0, cwd=work,
    )
    try:
        eventually(ports_file.exists, 90, "the server to start")
        ports = json.loads(ports_file.read_text())
        connection = Connection(ports["http"])
        connection.infer()
        connection.close()
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(int(p.name)) == process.pid]
        assert len(pids) == 3
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        eventually(lambda: not any(alive(pid) for pid in pids), 5, "every child gone")
    finally:
        if process.poll() is None:
            process.kill()
    assert shm_entries() - before == set()


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_workers_1_runs_one_process(repo: Path, tmp_path: Path) -> None:
    with running_server(repo, tmp_path / "srv") as server:
        assert server.children() == {"engine": [], "frontend": []}
        Connection(server.http_port).infer()

"""What the transport alone costs per request on this machine: the floor under any Python front end.

    python bench/transport_floor.py [--model mlp_nobatch] [--concurrency 1,32] [--window-ms 2000]
                                    [--protocols grpc,http] [--rounds N] [--compare LABEL=DIR]
                                    [--out bench/RESULTS.md [--section TITLE]]

1. Starts the real server on the example models and records, through pass-through proxies, its
   answers to every call perf_analyzer makes for `--model` over gRPC and over HTTP (metadata,
   config, statistics, infer).
2. Serves those recorded bytes from bare servers that do nothing else (no decoding, no
   validation, no model): grpc.aio (what model-runtime's gRPC uses), grpcio's thread-pool server,
   and a bare ASGI app on uvicorn with uvloop and httptools (what model-runtime's HTTP uses); where
   `pygrpc-native` is installed, its grpc.aio-compatible server too (HTTP/2 in Rust). The grpcio
   in use is the one on sys.path: PYTHONPATH=DIR with another grpcio in DIR measures that version,
   for model-runtime and the bare servers alike.
3. Drives the real server and each bare server with perf_analyzer, and reads each server
   process's CPU time from /proc: infer/s, p50/p99 and server CPU us per request.

   With `--rounds N` every server is measured N times, round by round, so a change in the machine's
   load hits them alike; `--compare LABEL=DIR` adds model-runtime served from another source tree
   (an A/B against an older commit: `git worktree add DIR COMMIT`, then copy runtime/_pb/*_pb2*.py
   and the runtime/*/_*.so files into it).

The gap between the real server and the bare server of the same stack is what model-runtime
adds; the bare server's figures are what the library costs before any of our code runs.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # tests/serving.py
sys.path.insert(0, str(BENCH_DIR))

import grpc  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_user_system_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process so far: utime and stime from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def recorded_path(directory: Path, method: str) -> Path:
    return directory / method.strip("/").replace("/", "__")


def bytes_handler(function: object) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(function)  # no (de)serializers: raw bytes both ways


class Recorder(grpc.GenericRpcHandler):
    """Pass-through to the real server that keeps the last answer to each method."""

    def __init__(self, target: str, directory: Path) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._directory = directory

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        upstream = self._channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            answer = await upstream(request)
            path = recorded_path(self._directory, method)
            if not path.exists():  # the first answer: perf_analyzer asks for statistics before it starts
                path.write_bytes(answer)
            return answer

        return bytes_handler(forward)


INFER = "/inference.GRPCInferenceService/ModelInfer"
STATISTICS = "/inference.GRPCInferenceService/ModelStatistics"


class CannedAio(grpc.GenericRpcHandler):
    """Answers each method with its recorded bytes; statistics count the inferences answered, since
    perf_analyzer wants to see the model's counters move."""

    def __init__(self, directory: Path) -> None:
        self._answers = {f"/{p.name.replace('__', '/')}": p.read_bytes() for p in directory.iterdir()}
        self.inferences = 0

    def answer(self, method: str) -> bytes:
        if method == INFER:
            self.inferences += 1
            return self._answers[INFER]
        if method == STATISTICS:
            from runtime._pb import grpc_service_pb2 as pb

            statistics = pb.ModelStatisticsResponse.FromString(self._answers[STATISTICS])
            for model in statistics.model_stats:
                model.inference_count = model.execution_count = self.inferences
                for duration in (model.inference_stats.success, model.inference_stats.queue,
                                 model.inference_stats.compute_input, model.inference_stats.compute_infer,
                                 model.inference_stats.compute_output):
                    duration.count, duration.ns = self.inferences, 1000 * self.inferences
            return statistics.SerializeToString()
        return self._answers[method]

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        if method not in self._answers:
            return None

        async def reply(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return self.answer(method)

        return bytes_handler(reply)


class CannedSync(CannedAio):
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        if method not in self._answers:
            return None
        return bytes_handler(lambda request, context: self.answer(method))


async def serve_aio(make_handler: Callable[[], grpc.GenericRpcHandler], port_file: Path) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((make_handler(),))  # made on the running loop (aio channels need one)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


async def serve_native_aio(make_handler: Callable[[], grpc.GenericRpcHandler], port_file: Path) -> None:
    """The same, on pygrpc-native's grpc.aio-compatible server (HTTP/2 and gRPC in Rust, outside the GIL)."""
    native_aio = importlib.import_module("pygrpc_native.aio")  # optional: pip install pygrpc-native

    server = native_aio.server()
    server.add_generic_rpc_handlers((make_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


def serve_sync(handler: grpc.GenericRpcHandler, port_file: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


def _request_key(scope: dict[str, Any]) -> str:
    return f"{scope['method']} {scope['path']}"


async def _read_body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _http_answer_path(directory: Path, key: str) -> Path:
    return directory / ("http_" + key.replace(" ", "_").replace("/", "~"))


def http_recorder(target: str, directory: Path) -> Callable[..., Awaitable[None]]:
    """ASGI pass-through to the real server's HTTP port that keeps the first answer per method+path."""
    import http.client

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.lower() not in (b"host", b"content-length")}
        connection = http.client.HTTPConnection(target, timeout=10)
        connection.request(scope["method"], scope["path"], body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        kept = [(k.lower().encode(), v.encode()) for k, v in response.getheaders()
                if k.lower() in ("content-type", "inference-header-content-length")]
        path = _http_answer_path(directory, _request_key(scope))
        if not path.exists():
            path.write_bytes(json.dumps({"status": response.status, "headers": [[k.decode(), v.decode()] for k, v in kept]}).encode()
                             + b"\n" + answer)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [*kept, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


def http_canned(directory: Path) -> Callable[..., Awaitable[None]]:
    """Bare ASGI app: each method+path gets its recorded answer; statistics count the inferences."""
    answers: dict[str, tuple[int, list[tuple[bytes, bytes]], bytes]] = {}
    for path in directory.glob("http_*"):
        head, body = path.read_bytes().split(b"\n", 1)
        meta = json.loads(head)
        key = path.name[len("http_"):].replace("_", " ", 1).replace("~", "/")
        answers[key] = (meta["status"], [(k.encode(), v.encode()) for k, v in meta["headers"]], body)
    inferences = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal inferences
        if scope["type"] != "http":
            return
        await _read_body(receive)
        key = _request_key(scope)
        status, headers, body = answers.get(key, (404, [], b""))
        if key.endswith("/infer"):
            inferences += 1
        elif key.endswith("/stats") and status == 200:
            statistics = json.loads(body)
            for model in statistics["model_stats"]:
                model["inference_count"] = model["execution_count"] = inferences
                for duration in model["inference_stats"].values():
                    duration["count"], duration["ns"] = inferences, 1000 * inferences
            body = json.dumps(statistics).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_http(app: Callable[..., Awaitable[None]], port_file: Path) -> None:
    import socket

    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)  # connections wait in the backlog until uvicorn accepts them
    port_file.write_text(str(sock.getsockname()[1]))
    config = uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def child(mode: str, argument: str, directory: Path, port_file: Path) -> None:
    """Entry point of the server subprocesses."""
    if mode == "record":
        import uvloop

        uvloop.install()
        asyncio.run(serve_aio(lambda: Recorder(argument, directory), port_file))
    elif mode == "aio":
        import uvloop

        uvloop.install()
        asyncio.run(serve_aio(lambda: CannedAio(directory), port_file))
    elif mode == "native-aio":
        import uvloop

        uvloop.install()
        asyncio.run(serve_native_aio(lambda: CannedAio(directory), port_file))
    elif mode == "sync":
        serve_sync(CannedSync(directory), port_file)
    elif mode == "http-record":
        serve_http(http_recorder(argument, directory), port_file)
    elif mode == "http":
        serve_http(http_canned(directory), port_file)


def start_child(mode: str, argument: str, directory: Path, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = work / f"{mode}.port"
    port_file.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", mode, argument, str(directory), str(port_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{mode} server did not start")
        time.sleep(0.05)
    return process, int(port_file.read_text())


def perf_analyzer(
    binary: Path, model: str, protocol: str, port: int, concurrency: int, window_ms: int, report: Path,
    flags: Sequence[str] = (),
) -> dict[str, float]:
    from lib.perf_analyzer import Transport, perf_analyzer_command, read_last_row

    transport = Transport(protocol, protocol, "binary", tuple(flags))
    for trials in (3, 6):  # on a busy machine three windows may all differ by more than 100%
        report.unlink(missing_ok=True)
        command = perf_analyzer_command(
            binary, model, f"127.0.0.1:{port}", transport, concurrency, window_ms, 100, trials, report
        )
        completed = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if completed.returncode == 0 and report.exists():
            break
    if completed.returncode != 0 or not report.exists():
        raise RuntimeError(f"perf_analyzer failed: {(completed.stdout + completed.stderr)[-800:]}")
    return read_last_row(report)


@dataclass
class Row:
    server: str
    protocol: str
    concurrency: int
    infer_per_s: float
    p50_us: float
    p99_us: float
    cpu_us_per_request: float
    cpu_share: float  # of one core
    round: int = 1
    system_us_per_request: float = 0.0  # of cpu_us_per_request, in the kernel (socket reads and writes, epoll)


def measure(
    binary: Path, label: str, model: str, protocol: str, pid: int, port: int, concurrency: int,
    window_ms: int, work: Path, flags: Sequence[str] = (),
) -> Row:
    (user_before, system_before), wall_before = process_user_system_s(pid), time.monotonic()
    row = perf_analyzer(binary, model, protocol, port, concurrency, window_ms, work / "report.csv", flags)
    user, system = process_user_system_s(pid)
    user, system = user - user_before, system - system_before
    cpu, wall = user + system, time.monotonic() - wall_before
    # perf_analyzer's run includes warm-up and trials beyond the reported window: CPU per request
    # is the whole run's CPU over the requests its throughput implies for the whole run.
    requests = row["Inferences/Second"] * wall
    measured = Row(label, protocol + (" streaming" if "--streaming" in flags else ""), concurrency,
                   row["Inferences/Second"], row["p50 latency"], row["p99 latency"], 1e6 * cpu / requests, cpu / wall,
                   system_us_per_request=1e6 * system / requests)
    print(f"  {measured.server}, {measured.protocol}, c{concurrency}: {measured.infer_per_s:,.0f} infer/s, "
          f"p50 {measured.p50_us:,.0f} us, {measured.cpu_us_per_request:,.0f} us CPU/request "
          f"({measured.system_us_per_request:,.0f} in the kernel)", flush=True)
    return measured


def native_version() -> str:
    try:
        from importlib.metadata import version

        return f", pygrpc-native {version('pygrpc-native')}"
    except Exception:  # not installed
        return ""


# What each server's CPU per request is compared with: the bare server of its stack, same round.
FLOOR = {"grpc": "bare grpc.aio", "grpc streaming": "bare grpc.aio", "http": "bare ASGI app on uvicorn+httptools"}


def markdown(rows: list[Row], model: str, command: str, rounds: int = 1) -> str:
    from lib.machine import machine_lines
    from lib.perf_analyzer import install_perf_analyzer

    floors = {(r.round, r.protocol, r.concurrency): r.cpu_us_per_request for r in rows if FLOOR.get(r.protocol) == r.server}
    lines = [
        f"_Written by `bench/transport_floor.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._",
        "", "```sh", command, "```", "",
        *machine_lines(install_perf_analyzer(), 1),
        f"- grpcio {grpc.__version__} (from {Path(grpc.__file__).parent.parent}){native_version()}", "",
        f"Model `{model}` (the example mlp without dynamic batching), batch-1 requests, perf_analyzer with "
        "binary tensors; the bare servers answer every call with bytes recorded from model-runtime. "
        "`server CPU`: the server process's CPU time (/proc) over the run, per request (of which `kernel`: system time, "
        "the socket reads and writes and epoll) and as a share of one core; "
        "`vs floor`: CPU per request over the bare server's of the same stack, same concurrency"
        + (", same round (rounds run one after another, each measuring every server)." if rounds > 1 else "."),
        "",
        ("| round " if rounds > 1 else "")
        + "| server | protocol | concurrency | infer/s | p50 us | p99 us | server CPU us/request | kernel | server CPU | vs floor |",
        ("|---:" if rounds > 1 else "") + "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        floor = floors.get((row.round, row.protocol, row.concurrency))
        versus = f"{row.cpu_us_per_request / floor:.2f}x" if floor else "-"
        lines.append(
            (f"| {row.round} " if rounds > 1 else "")
            + f"| {row.server} | {row.protocol} | {row.concurrency} | {row.infer_per_s:,.0f} | {row.p50_us:,.0f} | "
            f"{row.p99_us:,.0f} | {row.cpu_us_per_request:,.0f} | {row.system_us_per_request:,.0f} | "
            f"{100 * row.cpu_share:.0f}% | {versus} |"
        )
    if rounds > 1:
        lines += ["", f"Medians over the {rounds} rounds (each ratio taken within its round first):", "",
                  "| server | protocol | concurrency | server CPU us/request | kernel | vs floor |",
                  "|---|---|---:|---:|---:|---:|"]
        keys = list(dict.fromkeys((r.server, r.protocol, r.concurrency) for r in rows))
        for server, protocol, concurrency in keys:
            mine = [r for r in rows if (r.server, r.protocol, r.concurrency) == (server, protocol, concurrency)]
            ratios = [r.cpu_us_per_request / floors[(r.round, protocol, concurrency)] for r in mine
                      if floors.get((r.round, protocol, concurrency))]
            lines.append(
                f"| {server} | {protocol} | {concurrency} | {statistics.median(r.cpu_us_per_request for r in mine):,.0f} | "
                f"{statistics.median(r.system_us_per_request for r in mine):,.0f} | "
                + (f"{statistics.median(ratios):.2f}x |" if ratios else "- |")
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp_nobatch", help="mlp_nobatch (mlp without batching) or an example model")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--protocols", default="grpc,http", help="grpc, http or both (grpc includes streaming)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every server this many times, round by round (interleaved: load changes hit all alike)")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR",
                        help="also serve model-runtime from the source tree DIR (PYTHONPATH=DIR, this venv), "
                             "e.g. a git worktree of an older commit with runtime/_pb and the .so files copied in")
    parser.add_argument("--window-ms", type=int, default=2000)
    parser.add_argument("--out", type=Path, help="write the table into this RESULTS.md (between its markers)")
    parser.add_argument("--section", metavar="TITLE",
                        help="with --out: write a section of its own under this title (its markers derived from it) "
                             "instead of the main transport-floor section, e.g. for an A/B run")
    args = parser.parse_args()
    from lib.perf_analyzer import install_perf_analyzer
    from lib.report import write_section
    from tests.serving import start_server

    from runtime.examples import build_mlp, save_model, write_example_repository

    binary = install_perf_analyzer()
    levels = [int(c) for c in args.concurrency.split(",")]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("TRANSPORT_FLOOR_WORK", tmp))
        repository = write_example_repository(work / "repo")
        save_model(build_mlp(), repository, "mlp_nobatch", config_pbtxt="max_batch_size: 32\n")
        recorded = work / "recorded"
        recorded.mkdir(exist_ok=True)
        server_args = ["--intra-op-threads", "1"]
        servers = [("model-runtime", start_server(repository, work / "server", server_args))]
        processes: list[subprocess.Popen[bytes]] = []
        # (label, protocol, pid, port, perf_analyzer flags), in the order each round measures them
        targets: list[tuple[str, str, int, int, list[str]]] = []
        try:
            for item in args.compare:
                label, _, source = item.rpartition("=")
                directory = Path(source).resolve()
                servers.append((label or f"model-runtime ({directory.name})",
                                start_server(repository, work / f"server-{len(servers)}", server_args,
                                             env={"PYTHONPATH": str(directory)})))
            main_server = servers[0][1]
            for protocol, recorder, url in (("grpc", "record", main_server.grpc_url),
                                            ("http", "http-record", main_server.http_url)):
                if protocol not in protocols:
                    continue
                proxy, proxy_port = start_child(recorder, url, recorded, work)
                try:
                    perf_analyzer(binary, args.model, protocol, proxy_port, 1, 500, work / "record.csv")
                finally:
                    proxy.kill()
            bare = [("aio", "grpc", "bare grpc.aio"), ("sync", "grpc", "bare grpc sync server (8 threads)"),
                    ("http", "http", "bare ASGI app on uvicorn+httptools")]
            if importlib.util.find_spec("pygrpc_native") is not None:  # measured where installed
                bare.insert(1, ("native-aio", "grpc", "bare pygrpc-native aio server"))
            for protocol in protocols:
                for label, server in servers:
                    port = server.grpc_port if protocol == "grpc" else server.http_port
                    targets.append((label, protocol, server.process.pid, port, []))
                    if protocol == "grpc":
                        targets.append((label, protocol, server.process.pid, port, ["--streaming"]))
                for mode, bare_protocol, label in bare:
                    if bare_protocol == protocol:
                        process, port = start_child(mode, "-", recorded, work)
                        processes.append(process)
                        targets.append((label, protocol, process.pid, port, []))
            for round_number in range(1, args.rounds + 1):
                if args.rounds > 1:
                    print(f"round {round_number} of {args.rounds}", flush=True)
                for label, protocol, pid, port, flags in targets:
                    for concurrency in levels:
                        row = measure(binary, label, args.model, protocol, pid, port, concurrency,
                                      args.window_ms, work, flags)
                        row.round = round_number
                        rows.append(row)
        finally:
            for _label, server in servers:
                server.stop()
            for process in processes:
                process.kill()
    command = shlex.join(["python", "bench/transport_floor.py", *sys.argv[1:]])
    section = markdown(rows, args.model, command, args.rounds)
    print(section)
    if args.out and args.section:
        slug = "".join(c if c.isalnum() else "-" for c in args.section.lower()).strip("-")
        write_section(args.out, section, f"<!-- transport_floor.py:{slug}:begin -->",
                      f"<!-- transport_floor.py:{slug}:end -->", args.section)
    elif args.out:
        write_section(args.out, section, BEGIN_MARKER, END_MARKER, HEADING)


BEGIN_MARKER = "<!-- transport_floor.py:begin -->"
END_MARKER = "<!-- transport_floor.py:end -->"
HEADING = "Transport floor: what grpcio and uvicorn cost before our code runs (bench/transport_floor.py)"

if __name__ == "__main__":
    main()

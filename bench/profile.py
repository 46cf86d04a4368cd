"""Profile model-runtime under perf_analyzer load with py-spy, and say where the time goes per request.

    python bench/profile.py [--model mlp] [--protocol grpc] [--concurrency 8] [--seconds 15]
                            [--rate 100] [--native] [--gil] [--out-dir bench/out/profile]

Starts the server on the built-in examples (tests/serving.py; one ONNX Runtime thread, like
bench/run.py), puts perf_analyzer load on it, waits `--warmup-s`, then runs

    py-spy record --pid SERVER_PID --duration SECONDS --rate RATE --threads --format raw -o stacks.txt

while reading the server's request counter before and after, so each function's samples can be
turned into CPU microseconds per request. Writes to `--out-dir`:

    stacks.txt    collapsed stacks (Brendan Gregg format; open in https://www.speedscope.app or
                  flamegraph.pl)
    summary.txt   busy time per thread, own time per layer, top functions by own and total time,
                  all in us of CPU per request

and prints the summary. py-spy must be on PATH or in the venv (`pip install py-spy`, in the `bench`
extra). Without `--native` py-spy leaves out idle threads itself and shows Python frames only:
time spent in C under the event loop (uvloop, grpc's Cython callbacks, socket syscalls) is the
own time of `Runner.run`. `--native` adds C frames (and --idle, filtered here); it pauses the
process for each sample and is much slower, so use a lower rate (50) and a short duration.

By hand, on a server you started yourself:

    py-spy top --pid PID                                   # live view, sorted by own time
    py-spy record --pid PID --duration 15 -o profile.svg   # flame graph
    py-spy dump --pid PID                                  # one stack per thread, now
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))  # tests/serving.py

from tests.serving import RunningServer, start_server

PERF_ANALYZER = BENCH_DIR / ".tools" / "perf_analyzer"
JSON_TENSORS = ["--input-tensor-format", "json", "--output-tensor-format", "json"]
COUNTER_LINE = re.compile(
    r"^model_runtime_(requests|inference_rows|executions)(?:_total)?\{([^}]*)\}\s+(\S+)$"
)
FRAME = re.compile(r"^(?P<func>.*) \((?P<where>[^()]*)\)$")
# Native leaf functions that mean "this thread is waiting", not working (only --native needs these).
IDLE_FUNCTIONS = {
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect",
    "pthread_cond_wait", "pthread_cond_timedwait", "pthread_cond_clockwait", "sem_wait", "sem_timedwait",
    "sem_clockwait", "PyThread_acquire_lock_timed", "futex_wait", "syscall", "nanosleep",
    "clock_nanosleep", "accept", "accept4", "read", "recv", "recvmsg",
}  # fmt: skip
# Layers, matched on a frame's file or library; the innermost matching frame of a sample owns it.
LAYERS: list[tuple[str, re.Pattern[str]]] = [
    ("onnxruntime", re.compile(r"onnxruntime")),
    ("numpy", re.compile(r"numpy")),
    ("protobuf", re.compile(r"google/protobuf|_message\.|protobuf")),
    ("prometheus_client", re.compile(r"prometheus_client")),
    ("grpc library (grpc/aio, cygrpc)", re.compile(r"(^|/)grpc/|cygrpc|grpc_")),
    ("starlette/uvicorn/httptools", re.compile(r"starlette|uvicorn|httptools|h11")),
    ("threads/executor", re.compile(r"concurrent/futures|threading\.py|_queuemodule|libpthread")),
    ("asyncio/uvloop", re.compile(r"asyncio/|uvloop|loop\.c|_asynciomodule")),
    ("python interpreter (libpython)", re.compile(r"libpython|ceval|\.c$")),
    ("libc/kernel", re.compile(r"libc\.so|vdso|linux\.c|core\.c")),
]


@dataclass
class Profile:
    samples: int = 0
    threads: Counter[str] = field(default_factory=Counter)
    own: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    layers: Counter[str] = field(default_factory=Counter)
    loop_layers: Counter[str] = field(default_factory=Counter)  # MainThread only: the event loop
    thread_names: dict[str, str] = field(default_factory=dict)  # OS thread id -> Python thread name
    runtime_modules: Counter[str] = field(default_factory=Counter)


def frame_key(frame: str) -> tuple[str, str]:
    """(function, file or library without the line) of one collapsed-stack frame."""
    match = FRAME.match(frame)
    if not match:
        return frame, ""
    where = match.group("where").rsplit(":", 1)[0] if ":" in match.group("where") else match.group("where")
    return match.group("func"), where


def label(func: str, where: str) -> str:
    if func.startswith("0x"):
        return f"[{Path(where).name}]"  # an unnamed native address: name the library
    return f"{func} ({where})" if where else func


def layer_of(frames: list[tuple[str, str]]) -> str:
    """The innermost frame that is our code (runtime/...) or a known library decides the layer."""
    for func, where in reversed(frames):
        if where.startswith("runtime/") or "/runtime/" in where:
            module = where[where.find("runtime/") :].removesuffix(".py").replace("/", ".")
            return f"model-runtime: {module}"
        for name, pattern in LAYERS:
            if pattern.search(where) or pattern.search(func):
                return name
    return "other"


def is_idle(frames: list[tuple[str, str]]) -> bool:
    for func, _where in reversed(frames):
        if func.startswith("0x"):
            continue  # anonymous libc frames below the named wait call
        return func in IDLE_FUNCTIONS
    return False


def parse_stacks(path: Path, native: bool) -> Profile:
    profile = Profile()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread = parts[0] if parts[0].startswith("thread ") else "?"
        frames = [frame_key(frame) for frame in (parts[1:] if thread != "?" else parts)]
        if not frames or (native and is_idle(frames)):
            continue
        profile.samples += count
        header = re.match(r"^thread \((\w+)\): (.*)$", thread)
        if header:
            profile.thread_names[header.group(1)] = header.group(2)
        profile.threads[header.group(2) if header else thread] += count
        profile.own[label(*frames[-1])] += count
        for key in {label(*frame) for frame in frames}:
            profile.total[key] += count
        profile.layers[layer_of(frames)] += count
        if thread.endswith("MainThread"):
            profile.loop_layers[layer_of(frames)] += count
        for module in {w for _f, w in frames if w.startswith("runtime/")}:
            profile.runtime_modules[module] += count
    return profile


def counters(server: RunningServer, model: str) -> dict[str, float]:
    """The model's Prometheus counters: successful requests, rows inferred, executions (batches)."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    totals = {"requests": 0.0, "inference_rows": 0.0, "executions": 0.0}
    for line in text.splitlines():
        match = COUNTER_LINE.match(line)
        if not match or f'model="{model}"' not in match.group(2):
            continue
        if match.group(1) != "requests" or 'outcome="success"' in match.group(2):
            totals[match.group(1)] += float(match.group(3))
    return totals


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) each thread of `pid` has used, by 'name (tid)', from /proc."""
    ticks = float(os.sysconf("SC_CLK_TCK"))
    usage: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended
        usage[f"{name} ({task.name})"] = (int(fields[11]) + int(fields[12])) / ticks
    return usage


def cpu_lines(
    before: dict[str, float], after: dict[str, float], requests: float, seconds: float, names: dict[str, str]
) -> list[str]:
    """Per-thread CPU used while sampling: exact (kernel accounting), unlike py-spy's busy guess."""

    def named(key: str) -> str:  # 'python (1234)' -> 'MainThread (1234)' where py-spy saw the thread
        tid = key.rpartition("(")[2].rstrip(")")
        return f"{names[tid]} ({tid})" if tid in names else key

    used = {named(name): after[name] - before.get(name, 0.0) for name in after}
    total = sum(used.values())
    lines = [
        (
            f"CPU used by the server process (/proc, exact): {total:.2f} CPU-s in {seconds:.1f} s "
            f"({total / seconds:.0%} of one core) = {total * 1e6 / max(requests, 1):.0f} us per request"
        ),
        f"  {'us/request':>10}  {'share':>6}  thread",
    ]
    for name, seconds_used in sorted(used.items(), key=lambda item: -item[1]):
        if seconds_used > 0:
            lines.append(
                f"  {seconds_used * 1e6 / max(requests, 1):10.1f}  {seconds_used / max(total, 1e-9):6.1%}  {name}"
            )
    return lines + [""]


def table(title: str, counts: Counter[str], per_sample_us: float, samples: int, limit: int) -> list[str]:
    lines = [title, f"  {'us/request':>10}  {'share':>6}  what"]
    for key, count in counts.most_common(limit):
        lines.append(f"  {count * per_sample_us:10.1f}  {count / max(samples, 1):6.1%}  {key}")
    return lines + [""]


def summarize(profile: Profile, requests: float, seconds: float, rate: int, args: argparse.Namespace) -> str:
    per_sample_us = 1e6 / rate / max(requests, 1)
    busy_cpu_s = profile.samples / rate
    lines = [
        (
            f"model={args.model} protocol={args.protocol}{' json' if args.json else ''} concurrency={args.concurrency}"
            f" py-spy {seconds:.0f} s at {rate} Hz{' --native' if args.native else ''}{' --gil' if args.gil else ''}"
        ),
        f"requests answered while sampling: {requests:.0f} ({requests / seconds:.0f}/s)",
        (
            f"py-spy busy samples: {profile.samples} = {busy_cpu_s:.2f} CPU-s over {seconds:.0f} s wall "
            f"({busy_cpu_s / seconds:.0%} of one core) = {busy_cpu_s * 1e6 / max(requests, 1):.0f} us of CPU per request"
        ),
        (
            "(py-spy us/request = samples / rate / requests. A thread counts as busy when the OS says it is "
            "runnable, which on a crowded machine includes waiting for a core or the GIL: trust the /proc "
            "figures above for totals, py-spy's for where a thread's time goes.)"
        ),
        "",
    ]
    lines += table("busy time per thread", profile.threads, per_sample_us, profile.samples, 10)
    lines += table(
        "own time by layer (innermost frame that is model-runtime code or a known library)",
        profile.layers,
        per_sample_us,
        profile.samples,
        20,
    )
    lines += table(
        "event loop (MainThread) own time by layer",
        profile.loop_layers,
        per_sample_us,
        profile.samples,
        20,
    )
    lines += table("total time per model-runtime module (inclusive)", profile.runtime_modules, per_sample_us,
                   profile.samples, 20)  # fmt: skip
    lines += table("top functions by own time", profile.own, per_sample_us, profile.samples, args.top)
    lines += table(
        "top functions by total time (inclusive)", profile.total, per_sample_us, profile.samples, args.top
    )
    return "\n".join(lines)


def py_spy_binary() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install py-spy (it is in the 'bench' extra)")
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="mlp",
                        help="an example model: simple, mlp, image_cnn, or mlp_nobatch (the example mlp without "
                             "dynamic batching, as bench/transport_floor.py serves it) (mlp)")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--json", action="store_true", help="HTTP with JSON tensors instead of binary")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0, help="py-spy sampling time (15)")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="load before sampling starts (3)")
    parser.add_argument("--rate", type=int, default=100, help="samples per second (100; 50 with --native)")
    parser.add_argument("--native", action="store_true", help="include C frames (slow, perturbs the server)")
    parser.add_argument("--gil", action="store_true",
                        help="sample only threads holding the GIL (py-spy --gil): Python CPU without GIL waits")
    parser.add_argument("--top", type=int, default=25, help="rows in the function tables (25)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `model-runtime serve` flag")
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR / "out" / "profile")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    py_spy = py_spy_binary()
    if not PERF_ANALYZER.exists():
        raise SystemExit(f"{PERF_ANALYZER} missing: bash bench/install_perf_analyzer.sh")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stacks, summary_path = args.out_dir / "stacks.txt", args.out_dir / "summary.txt"
    work = Path(tempfile.mkdtemp(prefix="model-runtime-profile-"))
    repository = None
    if args.model == "mlp_nobatch":
        from runtime.examples import build_mlp, save_model, write_example_repository

        repository = write_example_repository(work / "repo")
        save_model(build_mlp(), repository, "mlp_nobatch", config_pbtxt="max_batch_size: 32\n")
    server = start_server(repository, work, ["--intra-op-threads", "1", "--log-level", "warning", *args.server_arg])
    load: subprocess.Popen[bytes] | None = None
    try:
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        window_ms = int((args.warmup_s + args.seconds + 30) * 1000)  # one window outlasts the sampling
        command = [
            str(PERF_ANALYZER), "-m", args.model, "-u", url, "-i", args.protocol,
            "--concurrency-range", str(args.concurrency), "--measurement-interval", str(window_ms),
            *(JSON_TENSORS if args.json else []),
        ]  # fmt: skip
        load = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(args.warmup_s)
        before, started = counters(server, args.model), time.monotonic()
        cpu_before = thread_cpu(server.process.pid)
        record = [
            py_spy, "record", "--pid", str(server.process.pid), "--duration", str(int(args.seconds)),
            "--rate", str(args.rate), "--threads", "--format", "raw", "-o", str(stacks),
        ]  # fmt: skip
        if args.native:
            record += ["--native", "--idle"]
        if args.gil:
            record.append("--gil")
        completed = subprocess.run(record, check=False, capture_output=True, text=True)
        elapsed, after = time.monotonic() - started, counters(server, args.model)
        cpu_after = thread_cpu(server.process.pid)
        if completed.returncode != 0:
            raise SystemExit(f"py-spy failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
        behind = [line for line in completed.stderr.splitlines() if "behind in sampling" in line]
        profile = parse_stacks(stacks, args.native)
        requests = after["requests"] - before["requests"]
        executions = after["executions"] - before["executions"]
        batch = (after["inference_rows"] - before["inference_rows"]) / executions if executions else 0.0
        text = "\n".join(
            [
                f"average batch formed while sampling: {batch:.2f} rows ({executions:.0f} executions)",
                *cpu_lines(cpu_before, cpu_after, requests, elapsed, profile.thread_names),
                summarize(profile, requests, elapsed, args.rate, args),
            ]
        )
        if behind:
            text += f"\nWARNING: py-spy fell behind ({behind[-1].strip()}): us/request figures are low.\n"
        summary_path.write_text(text + "\n")
        print(text)
        print(f"\nwrote {stacks} and {summary_path}")
    finally:
        if load is not None and load.poll() is None:
            load.send_signal(signal.SIGINT)
            try:
                load.wait(timeout=10)
            except subprocess.TimeoutExpired:
                load.kill()
                load.wait()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

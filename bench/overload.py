"""Sustained overload of a real model-runtime server, from a second process, on loopback.

    python bench/overload.py [--factor 4] [--seconds 10] [--recovery-seconds 4] [--locust-seconds 8]

Starts a server (tests/serving.py) on a repository with one CPU-heavy model (`heavy`: the wide MLP,
no dynamic batching, one instance, requests of --rows rows) and a bounded queue (--queue). Then:

1. capacity: two clients back to back for 3 s -> requests/s the server serves (the model always busy);
2. overload: requests arrive open loop at --factor x capacity for --seconds;
3. recovery: open loop at half the capacity for --recovery-seconds;
4. locust: the same overload offered by `locust -f bench/locustfile.py` (users x --user-rate), headless.

Each request's status and latency are recorded, and the server's RSS is sampled every 50 ms. Writes
--output (bench/results/overload.md) with the figures and the exact commands. Load phases last at most
--seconds + --recovery-seconds + --locust-seconds + 3 s; every request goes to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/serving.py

from lib.machine import proc_status
from tests.serving import RunningServer, start_server

from runtime.examples import build_wide_mlp, save_model
from runtime.loadtest.inputs import binary_body

HEAVY = 'name: "heavy"\nmax_batch_size: 256\n'


@dataclass
class Phase:
    name: str
    offered_per_s: float
    seconds: float
    results: list[tuple[int, float]] = field(default_factory=list)  # (status, latency s); status 0: client error

    def rate(self, status: int) -> float:
        return sum(1 for s, _ in self.results if s == status) / self.seconds

    def latencies(self, status: int) -> list[float]:
        return sorted(latency for s, latency in self.results if s == status)


@dataclass
class Figures:
    alone: float  # seconds, one request with the server idle
    capacity: float  # requests/s served with the model always busy
    baseline_rss: int
    peak_rss: int
    phases: list[Phase]
    locust: tuple[list[str], dict[str, str]] | None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * q))]


def milliseconds(values: list[float], q: float, digits: int = 0) -> str:
    return f"{percentile(values, q) * 1000:.{digits}f} ms" if values else "-"


def rss_bytes(pid: int) -> int:
    return (proc_status(pid, "VmRSS") or 0) * 1024


class Driver:
    def __init__(self, server: RunningServer, rows: int) -> None:
        self.server = server
        self.url = f"http://{server.http_url}/v2/models/heavy/infer"
        sample = {"INPUT": np.random.default_rng(0).random((rows, 512), dtype=np.float32)}
        self.body, header_length = binary_body(sample)
        self.headers = {"Inference-Header-Content-Length": str(header_length)}
        self.peak_rss = 0

    async def one(self, session: aiohttp.ClientSession) -> tuple[int, float]:
        started = time.monotonic()
        try:
            async with session.post(self.url, data=self.body, headers=self.headers) as response:
                await response.read()
                return response.status, time.monotonic() - started
        except (aiohttp.ClientError, TimeoutError):
            return 0, time.monotonic() - started

    async def closed_loop(self, session: aiohttp.ClientSession, clients: int, seconds: float) -> Phase:
        phase = Phase(f"{clients} clients back to back", 0.0, seconds)
        stop_at = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < stop_at:
                phase.results.append(await self.one(session))

        await asyncio.gather(*(client() for _ in range(clients)))
        return phase

    async def open_loop(self, session: aiohttp.ClientSession, name: str, per_s: float, seconds: float) -> Phase:
        phase = Phase(name, per_s, seconds)
        started = time.monotonic()
        tasks = []
        for index in range(int(per_s * seconds)):
            await asyncio.sleep(max(0.0, started + index / per_s - time.monotonic()))
            tasks.append(asyncio.ensure_future(self.one(session)))
        phase.seconds = time.monotonic() - started
        phase.offered_per_s = len(tasks) / phase.seconds
        phase.results = list(await asyncio.gather(*tasks))
        return phase

    async def sample_memory(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.peak_rss = max(self.peak_rss, rss_bytes(self.server.process.pid))
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass


def run_locust(server: RunningServer, per_s: float, seconds: int, rows: int, out: Path) -> tuple[list[str], dict[str, str]]:
    """Offer per_s requests/s through the package's locust user; the command and its aggregated row."""
    rate = 10.0
    users = max(1, math.ceil(per_s / rate))
    command = [
        "locust", "-f", "bench/locustfile.py", "V2HttpUser", "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
        "--host", f"http://{server.http_url}", "--model", "heavy", "--batch-size", str(rows),
        "--tensor-format", "binary", "--user-rate", str(rate), "--only-summary", "--csv", "locust",
    ]  # fmt: skip
    runnable = [sys.executable, "-m", *command[:-1], str(out / "locust")]
    subprocess.run(runnable, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=False)
    with open(out / "locust_stats.csv") as handle:
        rows_by_name = {row["Name"]: row for row in csv.DictReader(handle)}
    return command, rows_by_name.get("Aggregated", {})


async def measure(args: argparse.Namespace, server: RunningServer, work: Path) -> Figures:
    driver = Driver(server, args.rows)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        for _ in range(5):
            await driver.one(session)
        alone = statistics.median([(await driver.one(session))[1] for _ in range(10)])
        capacity_phase = await driver.closed_loop(session, 2, 3.0)
        capacity = capacity_phase.rate(200)
        baseline_rss = rss_bytes(server.process.pid)
        driver.peak_rss = baseline_rss
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(driver.sample_memory(stop))
        overload = await driver.open_loop(session, f"overload ({args.factor:g}x)", capacity * args.factor, args.seconds)
        recovery = await driver.open_loop(session, "recovery (0.5x)", capacity * 0.5, args.recovery_seconds)
        stop.set()
        await sampler
    locust = None
    if args.locust_seconds > 0:
        locust = run_locust(server, capacity * args.factor, args.locust_seconds, args.rows, work)
    return Figures(alone, capacity, baseline_rss, driver.peak_rss, [capacity_phase, overload, recovery], locust)


def report(args: argparse.Namespace, figures: Figures, command: str) -> str:
    phases = figures.phases
    mib = 1024 * 1024
    lines = [
        "# Overload: offered vs served vs rejected",
        "",
        f"Produced by `{command}` on {platform.node() or 'this machine'}: {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Client and server share these cores, and other "
        "jobs ran on the machine at the same time, so absolute rates are low and noisy; the shape is the point.",
        "",
        f"Server: one `heavy` model (wide MLP, 512 -> 3 x 2048 -> 16, no dynamic batching, one instance), "
        f"requests of {args.rows} rows over HTTP with binary tensors, `--default-max-queue-size {args.queue}`. "
        f"One request alone: {figures.alone * 1000:.1f} ms. Capacity (2 clients back to back): "
        f"**{figures.capacity:.1f} req/s**.",
        "",
        "| phase | offered req/s | served req/s (200) | rejected req/s (503) | other | served p50 | served p99 | rejected p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in phases:
        served, rejected = phase.latencies(200), phase.latencies(503)
        other = sum(1 for s, _ in phase.results if s not in (200, 503))
        offered = f"{phase.offered_per_s:.1f}" if phase.offered_per_s else "closed loop"
        lines.append(
            f"| {phase.name} | {offered} | {phase.rate(200):.1f} | {phase.rate(503):.1f} | {other} | "
            f"{milliseconds(served, 0.5)} | {milliseconds(served, 0.99)} | {milliseconds(rejected, 0.99, 1)} |"
        )
    overload, recovery = phases[1], phases[2]
    alone = figures.alone
    # A served request waits for the queue ahead of it and the request running, then runs itself.
    budget = (args.queue + 2) * alone
    service = 1 / overload.rate(200) if overload.rate(200) else float("nan")
    unanswered = sum(1 for s, _ in overload.results if s not in (200, 503))
    lines += [
        "",
        f"Peak server RSS during overload and recovery: **{figures.peak_rss / mib:.0f} MiB** "
        f"(before: {figures.baseline_rss / mib:.0f} MiB).",
        f"Requests not answered 200 or 503 under overload: {unanswered} of {len(overload.results)}.",
        f"Queue-delay budget, (queue + 2) x one request: {budget * 1000:.0f} ms with the request time measured "
        f"idle, {(args.queue + 2) * service * 1000:.0f} ms with the time per request under overload "
        f"(1 / served rate = {service * 1000:.1f} ms). Served under overload: p50 "
        f"{milliseconds(overload.latencies(200), 0.5)}, p99 {milliseconds(overload.latencies(200), 0.99)}. "
        "Latencies are measured by the client, which shares the cores with the server: the p50 is the full "
        "queue ahead, the p99 adds the scheduling jitter of an oversubscribed machine.",
        f"Recovery, the moment the load drops to 0.5x: {recovery.rate(503) * recovery.seconds:.0f} rejected, "
        f"served p99 {percentile(recovery.latencies(200), 0.99) * 1000:.0f} ms "
        f"(one request alone: {alone * 1000:.0f} ms).",
    ]
    if figures.locust is not None:
        locust_command, row = figures.locust
        lines += [
            "",
            "## The same overload through locust",
            "",
            "```sh",
            shlex.join(locust_command),
            "```",
            "",
            "(`--host` is the server this script started; `users x --user-rate` = "
            f"{args.factor:g} x capacity. Locust counts a 503 as a failure, and its percentiles mix served and "
            "rejected requests. Its users wait for each answer, so a user whose request sat in the queue falls "
            "behind its rate: locust offers less than users x rate, and is closed loop where the script is open.)",
            "",
            "| requests | failures (503) | req/s | failures/s | p50 | p99 | max |",
            "|---|---|---|---|---|---|---|",
            f"| {row.get('Request Count')} | {row.get('Failure Count')} | {float(row.get('Requests/s', 0)):.1f} | "
            f"{float(row.get('Failures/s', 0)):.1f} | {row.get('50%')} ms | {row.get('99%')} ms | "
            f"{float(row.get('Max Response Time', 0)):.0f} ms |",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=float, default=4.0, help="offered load / capacity")
    parser.add_argument("--seconds", type=float, default=10.0, help="overload phase (at most 20)")
    parser.add_argument("--recovery-seconds", type=float, default=4.0)
    parser.add_argument("--locust-seconds", type=int, default=8, help="0 skips the locust phase")
    parser.add_argument("--rows", type=int, default=64, help="rows per request")
    parser.add_argument("--queue", type=int, default=8, help="--default-max-queue-size of the server")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "overload.md")
    args = parser.parse_args()
    args.seconds = min(args.seconds, 20.0)
    args.locust_seconds = min(args.locust_seconds, 10)
    command = "python bench/overload.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        work = Path(tmp)
        save_model(build_wide_mlp(), work / "repo", "heavy", config_pbtxt=HEAVY)
        server_args = ["--default-max-queue-size", str(args.queue), "--allow-metrics", "false"]
        server = start_server(work / "repo", work / "server", server_args)
        try:
            figures = asyncio.run(measure(args, server, work))
        finally:
            code = server.stop()
    text = report(args, figures, command.strip())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    print(f"server exit status {code}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

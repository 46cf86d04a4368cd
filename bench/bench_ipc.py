"""The hop between a front end and the engine (runtime/ipc): round trip and pipelined throughput between
two processes, next to multiprocessing.Queue and a plain os.pipe ping-pong.

Every message is an infer-shaped request: an FP32 [1,256] input out, an FP32 [1,10] output back.

- channel: Channel + Caller, the tensors in memfd slabs (write_tensors / read_tensors views), an
  orjson descriptor per request and reply; the answer's blocks are released with a notify, as the
  front end does. Run under asyncio and under uvloop (both processes).
- mp.Queue: a request dict holding the numpy array put on one multiprocessing.Queue, the reply on
  another (pickled arrays: what the issue wants off the hot path).
- os.pipe: fixed-size raw bytes both ways, blocking reads and writes: the floor for one wake-up each way.

Ping-pong: one request at a time. Pipelined: 32 in flight. CPU: user+sys of both processes per message.

    python bench/bench_ipc.py [--markdown] [--count 20000]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.ipc import Caller, Channel, ChannelServer, Slab, read_tensors, write_tensors  # noqa: E402

INPUT = np.arange(256, dtype=np.float32).reshape(1, 256)
DEPTH = 32
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def use_loop(kind: str) -> Callable[[Any], Any]:
    if kind == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


# channel ----------------------------------------------------------------------------------------------------
async def channel_child(address: str) -> None:
    async def handle(channel: Channel) -> None:
        request: Slab | None = None
        response: Slab | None = None
        while True:
            for message in await channel.receive_many():
                op = message["op"]
                if op == "infer":
                    assert request is not None and response is not None
                    inputs = read_tensors(request, message["inputs"], copy=False)
                    output = inputs["INPUT0"][:, :10] * 2
                    written = write_tensors(response, {"OUTPUT0": output})
                    assert written is not None
                    channel.send_nowait({"id": message["id"], "outputs": written[0]})
                elif op == "release":
                    assert response is not None
                    for offset in message["offsets"]:
                        response.free(offset)
                elif op == "hello":
                    request = Slab.attach(channel.received_fds.pop(0), message["size"])
                    response = Slab.attach(channel.received_fds.pop(0), message["size"])
                    channel.send_nowait({"id": message["id"]})

    await ChannelServer.listen(address, handle)
    print("READY", flush=True)
    await asyncio.Event().wait()


async def channel_parent(address: str, count: int, depth: int, child: int) -> tuple[float, float]:
    channel = await Channel.connect(address)
    caller = Caller(channel)
    request, response = Slab.create(8 << 20, "bench-request"), Slab.create(8 << 20, "bench-response")
    await channel.send({"id": 0, "op": "hello", "size": request.size}, fds=[request.fd, response.fd])
    await asyncio.sleep(0.2)

    async def one() -> None:
        written = write_tensors(request, {"INPUT0": INPUT})
        assert written is not None
        refs, offsets = written
        reply = await caller.call(
            "infer", model="mlp", version="1", inputs=refs, outputs=None, parameters={},
            deadline=time.monotonic() + 30, protocol="grpc",
        )  # fmt: skip
        outputs = read_tensors(response, reply["outputs"], copy=False)
        assert outputs["OUTPUT0"].shape == (1, 10)
        del outputs
        for offset in offsets:
            request.free(offset)
        caller.notify("release", offsets=[ref[3] for ref in reply["outputs"]])

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    for _ in range(200):
        await one()
    cpu0, own0 = cpu_s(child), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker(count // depth) for _ in range(depth)))
    elapsed = time.perf_counter() - start
    cpu = cpu_s(child) - cpu0 + time.process_time() - own0
    await caller.close()
    return elapsed, cpu


# multiprocessing.Queue --------------------------------------------------------------------------------------
def queue_child(requests: Any, replies: Any) -> None:
    while True:
        message = requests.get()
        if message is None:
            return
        replies.put({"id": message["id"], "outputs": {"OUTPUT0": message["inputs"]["INPUT0"][:, :10] * 2}})


def queue_run(count: int, depth: int) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")
    requests, replies = context.Queue(), context.Queue()
    process = context.Process(target=queue_child, args=(requests, replies))
    process.start()

    def request(n: int) -> dict[str, Any]:
        return {"id": n, "op": "infer", "model": "mlp", "version": "1", "inputs": {"INPUT0": INPUT},
                "deadline": time.monotonic() + 30, "protocol": "grpc"}  # fmt: skip

    for n in range(200):
        requests.put(request(n))
        replies.get()
    assert process.pid is not None
    cpu0, own0 = cpu_s(process.pid), time.process_time()
    start = time.perf_counter()
    for n in range(min(depth, count)):
        requests.put(request(n))
    for n in range(depth, count + depth):
        assert replies.get()["outputs"]["OUTPUT0"].shape == (1, 10)
        if n < count:
            requests.put(request(n))
    elapsed = time.perf_counter() - start
    cpu = cpu_s(process.pid) - cpu0 + time.process_time() - own0
    requests.put(None)
    process.join()
    return elapsed, cpu


# os.pipe ----------------------------------------------------------------------------------------------------
_HEADER = struct.Struct("<QI")
REQUEST_SIZE = _HEADER.size + INPUT.nbytes
REPLY_SIZE = _HEADER.size + 40


def read_exactly(fd: int, size: int) -> bytes:
    data = os.read(fd, size)
    while len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            raise EOFError
        data += more
    return data


def pipe_child(read_fd: int, write_fd: int) -> None:
    while True:
        try:
            data = read_exactly(read_fd, REQUEST_SIZE)
        except EOFError:
            return
        os.write(write_fd, data[: REPLY_SIZE])


def pipe_run(count: int, depth: int) -> tuple[float, float]:
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", "pipe", f"{to_child_r},{to_parent_w}"],
        pass_fds=(to_child_r, to_parent_w),
    )  # fmt: skip
    os.close(to_child_r)
    os.close(to_parent_w)
    payload = _HEADER.pack(0, 0) + INPUT.tobytes()
    for _ in range(200):
        os.write(to_child_w, payload)
        read_exactly(to_parent_r, REPLY_SIZE)
    cpu0, own0 = cpu_s(process.pid), time.process_time()
    start = time.perf_counter()
    for _ in range(min(depth, count)):
        os.write(to_child_w, payload)
    for n in range(depth, count + depth):
        reply = read_exactly(to_parent_r, REPLY_SIZE)
        np.frombuffer(reply, np.float32, 10, _HEADER.size)
        if n < count:
            os.write(to_child_w, payload)
    elapsed = time.perf_counter() - start
    cpu = cpu_s(process.pid) - cpu0 + time.process_time() - own0
    os.close(to_child_w)
    process.wait()
    os.close(to_parent_r)
    return elapsed, cpu


def channel_run(loop: str, count: int, depth: int) -> tuple[float, float]:
    address = f"\0bench-ipc-{os.getpid()}-{loop}-{depth}"
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", f"channel-{loop}", "@" + address[1:]], stdout=subprocess.PIPE
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline() == b"READY\n"
    try:
        elapsed, cpu = use_loop(loop)(channel_parent(address, count, depth, process.pid))
    finally:
        process.kill()
        process.wait()
    return float(elapsed), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "pipe":
        read_fd, write_fd = map(int, args.target.split(","))
        pipe_child(read_fd, write_fd)
        return
    if args.child:
        loop = args.child.split("-", 1)[1]
        use_loop(loop)(channel_child("\0" + args.target[1:]))
        return

    runs: list[tuple[str, Callable[[int, int], tuple[float, float]]]] = [
        ("Channel + Caller + slabs, asyncio", lambda count, depth: channel_run("asyncio", count, depth)),
        ("Channel + Caller + slabs, uvloop", lambda count, depth: channel_run("uvloop", count, depth)),
        ("multiprocessing.Queue (pickled arrays)", queue_run),
        ("os.pipe, raw fixed-size bytes, blocking", pipe_run),
    ]
    results: dict[str, dict[int, tuple[float, float]]] = {}
    for name, run in runs:
        results[name] = {}
        for depth in (1, DEPTH):
            count = args.count if depth > 1 else args.count // 4
            elapsed, cpu = run(count, depth)
            results[name][depth] = (elapsed / count * 1e6, cpu / count * 1e6)
    base = results[runs[1][0]]
    header = ("| mechanism | ping-pong round trip (us) | time vs channel/uvloop | CPU per message, both processes (us) | "
              f"{DEPTH} in flight (msg/s) | time vs channel/uvloop | CPU per message at {DEPTH} (us) |")  # fmt: skip
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name, by_depth in results.items():
        rtt, cpu1 = by_depth[1]
        per, cpu32 = by_depth[DEPTH]
        lines.append(
            f"| {name} | {rtt:.1f} | {rtt / base[1][0]:.2f}x | {cpu1:.1f} | {1e6 / per:,.0f} | "
            f"{per / base[DEPTH][0]:.2f}x | {cpu32:.1f} |"
        )
    if args.markdown:
        print("\n".join(lines))
    else:
        for line in lines:
            print(line.replace("|", " ").strip())


if __name__ == "__main__":
    main()

"""What a swap, an unload and a failed load give back: threads, sessions, memory.

In-process tests drive the real registry, model and ONNX Runtime, and fail only the OS or library
boundary (a thread that cannot start, a session constructor that raises). The last tests read a
real server's /proc entry across repeated swaps.
"""
from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.repository.models import build_scale
from runtime.config import Settings
from runtime.errors import Code, ModelLoadError
from runtime.examples import build_mlp, save_model
from runtime.repository.registry import ModelRegistry
from runtime.repository.store import RepositoryStore
from runtime._pb import model_config_pb2 as mc
from runtime.validate import Validated
from tests.serving import running_server

CONFIG = "max_batch_size: 8\n"


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Whatever these tests see freed was freed by reference counting, not by a collection."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    save_model(build_scale(2.0), tmp_path, "scale", 1, config_pbtxt=CONFIG)
    return tmp_path


def registry_for(repo: Path) -> ModelRegistry:
    # inline_execution_us 0: every batch runs on the instance thread, the path that can hold a model.
    return ModelRegistry(RepositoryStore(repo), replace(Settings(), inline_execution_us=0.0))


def override(instances: int = 1, **fields: Any) -> mc.ModelConfig:
    config = mc.ModelConfig(name="scale", max_batch_size=8, **fields)
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    return config


def threads() -> int:
    """Threads of this process, less asyncio's default executor: loads run there, and it keeps its
    idle threads (a bounded pool) whatever a load leaves behind."""
    return sum(not thread.name.startswith("asyncio_") for thread in threading.enumerate())


async def infer_once(registry: ModelRegistry) -> float:
    served = registry.get("scale")
    request = Validated({"INPUT0": np.ones((1, 4), dtype=np.float32)}, 1, ((4,),), ["OUTPUT0"])
    outputs = await served.infer(served.prepare(request))
    return float(outputs["OUTPUT0"][0, 0])


class SessionCensus:
    """Every InferenceSession ONNX Runtime makes, weakly; optionally the n-th constructor call fails."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> None:
        self.sessions: list[weakref.ref[ort.InferenceSession]] = []
        self.calls = 0
        real = ort.InferenceSession
        census = self

        def make(*args: Any, **kwargs: Any) -> ort.InferenceSession:
            census.calls += 1
            if fail_at is not None and census.calls == fail_at:
                raise RuntimeError("onnxruntime: std::bad_alloc")
            session = real(*args, **kwargs)
            census.sessions.append(weakref.ref(session))
            return session

        monkeypatch.setattr(ort, "InferenceSession", make)

    def alive(self) -> int:
        return sum(ref() is not None for ref in self.sessions)


def fail_thread_start_after(monkeypatch: pytest.MonkeyPatch, started: int) -> None:
    """threading.Thread.start raises as CPython does when the OS refuses a thread, after `started` ok."""
    real: Callable[[threading.Thread], None] = threading.Thread.start
    count = 0

    def start(thread: threading.Thread) -> None:
        nonlocal count
        if thread.name.startswith("asyncio_"):  # the load's own executor thread is not counted
            real(thread)
            return
        count += 1
        if count > started:
            raise RuntimeError("can't start new thread")
        real(thread)

    monkeypatch.setattr(threading.Thread, "start", start)


# ---- swaps free what they retire ------------------------------------------------------------


def test_a_swapped_out_version_is_freed_by_refcount_when_drained(repo: Path, no_gc: None) -> None:
    async def scenario() -> None:
        registry = registry_for(repo)
        await registry.load("scale", override(instances=2))
        assert await infer_once(registry) == 2.0  # a job ran on an instance thread
        baseline = threads()
        retired = weakref.ref(registry.get("scale"))
        backend = weakref.ref(registry.get("scale").backend)
        # Same version, changed config: a real swap that replaces version 1 by a new load of it.
        await registry.load("scale", override(instances=2, dynamic_batching=mc.ModelDynamicBatching()))
        assert retired() is None, gc.get_referrers(retired())
        assert backend() is None
        assert threads() == baseline
        assert await infer_once(registry) == 2.0
        await registry.close()

    asyncio.run(scenario())


def test_thread_count_does_not_grow_with_swaps(repo: Path, no_gc: None) -> None:
    async def scenario() -> list[int]:
        registry = registry_for(repo)
        counts = []
        for swap in range(12):
            delay = 100 + swap % 2  # alternate a harmless field so each load is a real swap
            await registry.load("scale", override(dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=delay)))
            assert await infer_once(registry) == 2.0
            counts.append(threads())
        await registry.close()
        return counts

    before = threads()
    counts = asyncio.run(scenario())
    assert set(counts) == {before + 1}, counts  # the one instance thread of the serving version
    assert threads() == before


def test_unload_frees_sessions_and_threads(repo: Path, monkeypatch: pytest.MonkeyPatch, no_gc: None) -> None:
    census = SessionCensus(monkeypatch)

    async def scenario() -> None:
        registry = registry_for(repo)
        await registry.load("scale", override(instances=3))
        await infer_once(registry)
        assert census.alive() == 3
        running = threads()
        await registry.unload("scale")
        assert census.alive() == 0
        assert threads() == running - 3

    asyncio.run(scenario())


# ---- a load that fails part-way gives back everything it made -------------------------------


def test_session_k_of_n_failing_frees_the_sessions_already_opened(repo: Path, monkeypatch: pytest.MonkeyPatch, no_gc: None) -> None:
    census = SessionCensus(monkeypatch, fail_at=3)

    async def scenario() -> None:
        before = threads()
        registry = registry_for(repo)
        with pytest.raises(ModelLoadError, match="cannot load"):
            await registry.load("scale", override(instances=4))
        assert census.calls == 3 and len(census.sessions) == 2
        assert census.alive() == 0
        assert threads() == before

    asyncio.run(scenario())


def test_thread_k_of_n_failing_is_resource_exhausted_and_frees_everything(
    repo: Path, monkeypatch: pytest.MonkeyPatch, no_gc: None
) -> None:
    async def scenario() -> None:
        registry = registry_for(repo)
        await registry.load("scale", override(instances=1))
        serving = weakref.ref(registry.get("scale"))
        census = SessionCensus(monkeypatch)
        before = threads()
        with monkeypatch.context() as patch:
            fail_thread_start_after(patch, 3)
            with pytest.raises(ModelLoadError) as caught:
                await registry.load("scale", override(instances=6))
        assert caught.value.code is Code.RESOURCE_EXHAUSTED
        assert caught.value.message.startswith("model 'scale' version 1: cannot start thread 4 of 6")
        assert threads() == before
        assert len(census.sessions) == 6 and census.alive() == 0
        # Nothing that served changed, and the next load works.
        assert registry.get("scale") is serving()
        assert await infer_once(registry) == 2.0
        await registry.load("scale", override(instances=2))
        assert await infer_once(registry) == 2.0
        await registry.close()
        assert census.alive() == 0

    asyncio.run(scenario())


def test_warm_up_failing_after_the_threads_started_frees_them(
    repo: Path, monkeypatch: pytest.MonkeyPatch, no_gc: None
) -> None:
    census = SessionCensus(monkeypatch)
    config = override(instances=3)
    warmup = config.model_warmup.add(name="from-file", batch_size=1)
    warmup.inputs["INPUT0"].data_type = mc.TYPE_FP32
    warmup.inputs["INPUT0"].dims.extend([4])
    warmup.inputs["INPUT0"].input_data_file = "missing.bin"

    async def scenario() -> None:
        before = threads()
        registry = registry_for(repo)
        with pytest.raises(ModelLoadError, match="warm-up failed"):
            await registry.load("scale", config)
        assert len(census.sessions) == 3
        assert census.alive() == 0
        assert threads() == before

    asyncio.run(scenario())


# ---- a real server across repeated swaps ----------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            fields[key] = int(value.split()[0])  # VmRSS in kB
    return fields


def test_server_threads_and_rss_stay_flat_over_30_swaps(tmp_path: Path) -> None:
    # About 10 MB of weights, so a retired version that stays in memory shows in RSS at once.
    save_model(build_mlp(seed=0, hidden=120_000), tmp_path / "repo", "mlp", 1, config_pbtxt="max_batch_size: 8\n")
    with running_server(tmp_path / "repo", tmp_path / "srv", ["--model-control-mode", "explicit", "--load-model", "mlp"]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("INPUT", [1, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
        samples: dict[int, dict[str, int]] = {}
        for swap in range(1, 31):
            config = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 100 + swap % 2}}
            client.load_model("mlp", config=json.dumps(config))
            client.infer("mlp", [tensor])
            if swap in (10, 30):
                samples[swap] = proc_status(server.process.pid)
        client.close()
    # The load executor's bounded pool may start a second idle thread; a leak adds one per swap (20).
    assert samples[30]["Threads"] <= samples[10]["Threads"] + 2, samples
    # Each leaked version would add its ~10 MB: 20 of them, 200 MB. Allow allocator noise only.
    assert samples[30]["VmRSS"] - samples[10]["VmRSS"] < 40 * 1024, samples


def test_server_answers_thread_exhaustion_as_resource_exhausted_and_recovers(tmp_path: Path) -> None:
    """An instance count the OS cannot give threads for (its address space capped below their stacks)."""
    import resource

    save_model(build_scale(2.0), tmp_path / "repo", "scale", 1, config_pbtxt=CONFIG)
    with running_server(tmp_path / "repo", tmp_path / "srv", ["--model-control-mode", "explicit", "--load-model", "scale"]) as server:
        pid = server.process.pid
        client = grpcclient.InferenceServerClient(server.grpc_url)
        before = proc_status(pid)["Threads"]
        vm_size = int(next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmSize:")).split()[1]) * 1024
        limits = resource.prlimit(pid, resource.RLIMIT_AS)
        # Room for the sessions of a tiny model, not for 8 thread stacks of 8 MiB each.
        resource.prlimit(pid, resource.RLIMIT_AS, (vm_size + 16 * 2**20, limits[1]))
        try:
            with pytest.raises(InferenceServerException) as caught:
                client.load_model("scale", config=json.dumps({
                    "max_batch_size": 8, "instance_group": [{"count": 8, "kind": "KIND_CPU"}],
                }))
        finally:
            resource.prlimit(pid, resource.RLIMIT_AS, limits)
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED", caught.value
        assert "cannot start thread" in str(caught.value)
        deadline = time.monotonic() + 10
        while proc_status(pid)["Threads"] > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc_status(pid)["Threads"] <= before
        client.load_model("scale", config=json.dumps({"max_batch_size": 8, "instance_group": [{"count": 2}]}))
        tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        assert client.infer("scale", [tensor]).as_numpy("OUTPUT0")[0, 0] == 2.0
        client.close()

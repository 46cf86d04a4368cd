"""runtime/shm/regions.py: the region table, its checks before mapping, leases, and the engine reading and
writing tensors in shared memory (in process, no transport)."""
from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm

from runtime.app import start_core
from runtime.config import Settings
from runtime.errors import Code, InvalidInput, RuntimeServingError
from runtime.examples import build_mlp, build_simple, save_model
from runtime.examples.configs import MLP_CONFIG, SIMPLE_CONFIG
from runtime.shm import RegionTable, stand_in
from runtime.types import InferRequest, RequestedOutput, SharedInput, SharedMemoryRef
from tests.engine import OpenEngine
from tests.shm import infer_mlp_from_regions

_names = itertools.count()


class Segments:
    """POSIX shared-memory objects made with tritonclient's helpers, destroyed after the test."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def make(self, byte_size: int) -> tuple[str, Any]:
        key = f"/test_shm_core_{os.getpid()}_{next(_names)}"
        handle = shm.create_shared_memory_region(key[1:], key, byte_size)
        self.handles.append(handle)
        return key, handle


@pytest.fixture
def segments() -> Iterator[Segments]:
    made = Segments()
    yield made
    for handle in made.handles:
        shm.destroy_shared_memory_region(handle)


def simple_request(region: str, outputs: str | None = None) -> InferRequest:
    shared = {
        "INPUT0": SharedInput("INT32", (1, 16), SharedMemoryRef(region, 64, 0)),
        "INPUT1": SharedInput("INT32", (1, 16), SharedMemoryRef(region, 64, 64)),
    }
    wanted = None if outputs is None else [RequestedOutput("OUTPUT0", shared_memory=SharedMemoryRef(outputs, 64))]
    return InferRequest("simple", "", {}, requested_outputs=wanted, shared_inputs=shared)


A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 5, dtype=np.int32)


async def test_register_is_refused_unless_allowed_naming_the_flag(segments: Segments) -> None:
    key, _ = segments.make(64)
    with pytest.raises(RuntimeServingError) as caught:
        await RegionTable().register_system("r", key, 0, 64)
    assert caught.value.code is Code.PERMISSION_DENIED and "--allow-client-shm true" in caught.value.message


async def test_the_window_is_checked_against_the_object_before_mapping(segments: Segments) -> None:
    key, _ = segments.make(4096)
    table = RegionTable(allowed=True)
    with pytest.raises(InvalidInput) as caught:
        await table.register_system("r", key, 4000, 100)
    message = caught.value.message
    assert "'r'" in message and key in message and "offset 4000 + byte_size 100 = 4100" in message and "4096 bytes" in message
    await table.register_system("r", key, 4000, 96)  # ends exactly at the object's end
    assert [s.byte_size for s in table.system_status()] == [96]
    await table.unregister_system()


@pytest.mark.parametrize(
    ("key", "fragment"),
    [("/no_such_shm_object", "no shared-memory object"), ("/a/b", "one path component"), ("..", "one path component"), ("", "one path component")],
)
async def test_keys_that_name_no_object_are_refused(key: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        await RegionTable(allowed=True).register_system("r", key, 0, 8)


async def test_a_symlink_in_the_shm_directory_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 64)
    link = Path("/dev/shm") / f"test_shm_link_{os.getpid()}"
    link.symlink_to(target)
    try:
        with pytest.raises(InvalidInput, match="cannot open"):
            await RegionTable(allowed=True).register_system("r", f"/{link.name}", 0, 64)
    finally:
        link.unlink()


async def test_status_unregister_and_names(segments: Segments) -> None:
    key, _ = segments.make(64)
    table = RegionTable(allowed=True)
    await table.unregister_system()  # nothing registered: success
    await table.unregister_cuda()
    await table.unregister_system("unknown")  # as Triton: no error
    await table.register_system("r", key, 0, 64)
    with pytest.raises(RuntimeServingError) as caught:
        await table.register_system("r", key, 0, 32)
    assert caught.value.code is Code.ALREADY_EXISTS
    with pytest.raises(RuntimeServingError) as caught:
        table.system_status("other")
    assert caught.value.code is Code.NOT_FOUND
    with pytest.raises(RuntimeServingError) as caught:
        table.cuda_status("r")  # a system region is no CUDA region
    assert caught.value.code is Code.NOT_FOUND
    await table.unregister_cuda("r")  # nor does CUDA's unregister remove it
    assert [s.name for s in table.system_status()] == ["r"]
    await table.unregister_system("r")
    assert table.system_status() == []


async def test_unregister_waits_for_the_requests_using_the_region(segments: Segments) -> None:
    key, handle = segments.make(128)
    shm.set_shared_memory_region(handle, [A, B])
    table = RegionTable(allowed=True)
    await table.register_system("in", key, 0, 128)
    lease = table.lease(simple_request("in"))
    assert lease is not None
    unregister = asyncio.ensure_future(table.unregister_system("in"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not unregister.done()  # held by the request
    with pytest.raises(InvalidInput, match="'in' is not registered"):  # the name is gone for new requests
        table.lease(simple_request("in"))
    inputs = lease.read_inputs({})  # the memory is still there for the running one
    np.testing.assert_array_equal(inputs["INPUT0"], A)
    np.testing.assert_array_equal(inputs["INPUT1"], B)
    del inputs
    lease.release()
    await asyncio.wait_for(unregister, 10)


async def test_a_refused_lease_holds_nothing(segments: Segments) -> None:
    key, _ = segments.make(64)
    table = RegionTable(allowed=True)
    await table.register_system("in", key, 0, 64)
    with pytest.raises(InvalidInput, match="'INPUT1'.*offset 64 \\+ shared_memory_byte_size 64 = 128.*64 bytes"):
        table.lease(simple_request("in"))  # INPUT0 fits, INPUT1 runs past the end
    await asyncio.wait_for(table.unregister_system("in"), 10)  # INPUT0's hold was given back


def test_a_stand_in_holds_no_memory() -> None:
    for array in (np.ones((8, 3, 224, 224), np.float32), np.array([[b"a", b"b"]], dtype=object)):
        standing = stand_in(array)
        assert standing.shape == array.shape and standing.dtype == array.dtype and not any(standing.strides)


# ---- through the engine --------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    save_model(build_simple(), tmp_path, "simple", config_pbtxt=SIMPLE_CONFIG)
    save_model(build_mlp(), tmp_path, "mlp", config_pbtxt=MLP_CONFIG)
    return tmp_path


@pytest.fixture(params=[False, True], ids=["views", "io-binding"])
def bind_system(request: pytest.FixtureRequest) -> bool:
    """System-shm tensors as views of the mapping (the default), or by pointer through IO binding."""
    return bool(request.param)


async def test_engine_reads_inputs_and_writes_outputs(
    repo: Path, open_engine: OpenEngine, segments: Segments, bind_system: bool
) -> None:
    engine = (await open_engine(repo, execution_provider="cpu")).engine
    engine.shared_memory = RegionTable(allowed=True, bind_system=bind_system)
    key_in, handle_in = segments.make(128)
    key_out, handle_out = segments.make(64)
    shm.set_shared_memory_region(handle_in, [A, B])
    await engine.system_shm_register("in", key_in, 0, 128)
    await engine.system_shm_register("out", key_out, 0, 64)
    response = await engine.infer(simple_request("in", "out"))
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle_out, np.int32, [1, 16]), A + B)
    assert response.outputs["OUTPUT0"].shape == (1, 16) and not any(response.outputs["OUTPUT0"].strides)
    await asyncio.wait_for(engine.system_shm_unregister(), 10)  # every lease was released


async def test_requests_from_different_regions_share_one_batch(
    repo: Path, open_engine: OpenEngine, segments: Segments, bind_system: bool
) -> None:
    """Eight requests submitted together, each with its own input and output region: the mlp's dynamic batcher
    gathers them from eight regions into fewer batches and scatters each answer into its own region."""
    opened = await open_engine(repo, execution_provider="cpu")
    engine = opened.engine
    engine.shared_memory = RegionTable(allowed=True, bind_system=bind_system)
    rng = np.random.default_rng(7)
    cases = []
    for index in range(8):
        data = rng.standard_normal((1, 16)).astype(np.float32)
        key_in, handle_in = segments.make(64)
        key_out, handle_out = segments.make(16)
        shm.set_shared_memory_region(handle_in, [data])
        await engine.system_shm_register(f"in{index}", key_in, 0, 64)
        await engine.system_shm_register(f"out{index}", key_out, 0, 16)
        cases.append((data, handle_out))
    expected = [(await engine.infer(InferRequest("mlp", "", {"INPUT": data}))).outputs["PROBABILITIES"] for data, _ in cases]
    served = opened.registry.get("mlp", "")
    executions = served.stats.execution_count
    await infer_mlp_from_regions(engine, 8)
    assert served.stats.execution_count - executions < 8  # at least two requests shared a batch
    for (_, handle_out), want in zip(cases, expected):
        np.testing.assert_allclose(shm.get_contents_as_numpy(handle_out, np.float32, [1, 4]), want, rtol=1e-6)
    await asyncio.wait_for(engine.system_shm_unregister(), 10)


async def test_an_object_truncated_after_registering_is_refused_not_read(segments: Segments) -> None:
    """Reading past the end of a truncated object would kill the server with SIGBUS (on the old code this test's
    process dies); the lease checks the object's size first."""
    key, handle = segments.make(8192)
    table = RegionTable(allowed=True)
    await table.register_system("in", key, 4096, 128)
    fd = os.open(f"/dev/shm/{key[1:]}", os.O_RDWR)
    try:
        os.ftruncate(fd, 100)
    finally:
        os.close(fd)
    with pytest.raises(InvalidInput) as caught:
        lease = table.lease(simple_request("in"))
        assert lease is not None
        lease.read_inputs({})["INPUT0"].sum()  # touches the memory
    message = caught.value.message
    assert key in message and "shrunk to 100 bytes" in message and "offset 4096 + byte_size 128 = 4224" in message
    await asyncio.wait_for(table.unregister_system(), 10)


async def test_offsets_inside_one_region_and_mixed_tensors(
    repo: Path, open_engine: OpenEngine, segments: Segments, bind_system: bool
) -> None:
    """Every tensor of several requests in one region at its own offset (one of them not aligned to its
    element size: copied, not bound), batched together, next to inline inputs and inline outputs."""
    opened = await open_engine(repo, execution_provider="cpu")
    engine = opened.engine
    engine.shared_memory = RegionTable(allowed=True, bind_system=bind_system)
    key, handle = segments.make(4096)
    await engine.system_shm_register("one", key, 0, 4096)
    rng = np.random.default_rng(5)
    offsets = [0, 130, 1024]  # 130: FP32 at an odd address
    datas = [rng.standard_normal((rows, 16)).astype(np.float32) for rows in (1, 3, 2)]
    for offset, data in zip(offsets, datas):
        shm.set_shared_memory_region(handle, [data], offset)
    inline = rng.standard_normal((2, 16)).astype(np.float32)
    requests = [
        InferRequest(
            "mlp", "", {},
            requested_outputs=[RequestedOutput("PROBABILITIES", shared_memory=SharedMemoryRef("one", data.shape[0] * 16, 2048 + 256 * i))],
            shared_inputs={"INPUT": SharedInput("FP32", data.shape, SharedMemoryRef("one", data.nbytes, offset))},
        )
        for i, (offset, data) in enumerate(zip(offsets, datas))
    ] + [InferRequest("mlp", "", {"INPUT": inline})]  # fmt: skip
    expected = [
        (await engine.infer(InferRequest("mlp", "", {"INPUT": data}))).outputs["PROBABILITIES"] for data in [*datas, inline]
    ]
    responses = await asyncio.gather(*(engine.infer(request) for request in requests))
    for i, want in enumerate(expected[:3]):
        got = shm.get_contents_as_numpy(handle, np.float32, [want.shape[0], 4], 2048 + 256 * i)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        assert not any(responses[i].outputs["PROBABILITIES"].strides)
    np.testing.assert_allclose(responses[3].outputs["PROBABILITIES"], expected[3], rtol=1e-5)
    await asyncio.wait_for(engine.system_shm_unregister(), 10)


@pytest.mark.parametrize("io_binding", [False, True])
async def test_the_shm_io_binding_setting_reaches_the_region_table(tmp_path: Path, io_binding: bool) -> None:
    repo = tmp_path / "repo"
    save_model(build_simple(), repo, "simple", config_pbtxt=SIMPLE_CONFIG)
    core = await start_core(Settings(model_repository=repo, allow_metrics=False, shm_io_binding=io_binding))
    try:
        assert core.engine.shared_memory.bind_system is io_binding
    finally:
        await core.registry.close()

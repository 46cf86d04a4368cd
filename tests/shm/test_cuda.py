"""Tensors in CUDA shared-memory regions, through the engine, on a machine without a GPU.

cuda-python cannot run here, so its runtime module is replaced by tests/shm/fake_cudart.py, whose
"device" allocations are host buffers and whose cudaMemcpy checks that the kind of each copy matches
where its pointers are. Everything of ours runs for real: registering (the IPC handle opened), the lease,
the IO-binding executor with a CPU session (CUDA inputs copied device to host into the batch, outputs
host to device into the regions: explicit copies, as on a CPU model on a GPU machine), batching across
regions, errors and unregistering. What only a GPU can show (ORT binding 'cuda' pointers, device-to-device
gathering) is bench/gpu_check_cuda_shm.py's job.
"""
from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.backends.binding import Placement
from runtime.backends.device import NEEDS_GPU, cuda_runtime
from runtime.engine import Engine
from runtime.errors import Code, InvalidInput, RuntimeServingError
from runtime.examples import build_mlp, build_simple, save_model, write_example_repository
from runtime.examples.configs import MLP_CONFIG, SIMPLE_CONFIG
from runtime.shm import RegionTable
from runtime.types import InferRequest, RequestedOutput, SharedInput, SharedMemoryRef
from tests.engine import OpenEngine
from tests.shm import infer_mlp_from_regions
from tests.models import build_identity
from tests.shm.fake_cudart import FakeCudaRuntime, install

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 5, dtype=np.int32)


@pytest.fixture
def cudart(monkeypatch: pytest.MonkeyPatch) -> FakeCudaRuntime:
    fake = FakeCudaRuntime(devices=2)
    install(monkeypatch, fake)
    return fake


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    save_model(build_simple(), tmp_path, "simple", config_pbtxt=SIMPLE_CONFIG)
    save_model(build_mlp(), tmp_path, "mlp", config_pbtxt=MLP_CONFIG)
    save_model(build_identity("BYTES"), tmp_path, "identity_bytes")
    # The same MLP with a (no-op) reshape: a model that reads its inputs on the host, so not bindable.
    reshaped = MLP_CONFIG.replace('name: "mlp"', 'name: "mlp_reshaped"').replace(
        "dims: [ 16 ] }", "dims: [ 16 ] reshape: { shape: [ 16 ] } }"
    )
    save_model(build_mlp(), tmp_path, "mlp_reshaped", config_pbtxt=reshaped)
    return tmp_path


@pytest.fixture
async def engine(repo: Path, open_engine: OpenEngine, cudart: FakeCudaRuntime) -> Engine:
    """The engine over `repo` on the CPU, taking regions, with the fake cuda-python installed."""
    opened = (await open_engine(repo, execution_provider="cpu")).engine
    opened.shared_memory = RegionTable(allowed=True)
    return opened


def simple_request(inputs: str, outputs: str | None, offset: int = 0) -> InferRequest:
    shared = {
        "INPUT0": SharedInput("INT32", (1, 16), SharedMemoryRef(inputs, 64, offset)),
        "INPUT1": SharedInput("INT32", (1, 16), SharedMemoryRef(inputs, 64, offset + 64)),
    }
    wanted = None if outputs is None else [
        RequestedOutput("OUTPUT0", shared_memory=SharedMemoryRef(outputs, 64)),
        RequestedOutput("OUTPUT1", shared_memory=SharedMemoryRef(outputs, 64, 64)),
    ]  # fmt: skip
    return InferRequest("simple", "", {}, requested_outputs=wanted, shared_inputs=shared)


def test_without_cuda_python_registering_says_a_gpu_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as where cuda-python is absent
    with pytest.raises(RuntimeServingError) as caught:
        cuda_runtime()
    assert caught.value.code is Code.FAILED_PRECONDITION and caught.value.message.startswith(NEEDS_GPU)


def test_no_device_says_a_gpu_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeCudaRuntime(devices=0))
    with pytest.raises(RuntimeServingError, match=f"{NEEDS_GPU}: no CUDA device is usable"):
        asyncio.run(RegionTable(allowed=True).register_cuda("r", b"\0" * 64, 0, 64))


async def test_inputs_and_outputs_in_cuda_regions_on_a_cpu_model(engine: Engine, cudart: FakeCudaRuntime) -> None:
    """A CPU session cannot read device memory: the inputs are copied device to host into the batch and the
    outputs host to device into the client's region, by cudaMemcpy with the right kinds (the fake checks)."""
    raw_in, memory_in = cudart.allocate(256, device=1)
    raw_out, memory_out = cudart.allocate(128, device=1)
    memory_in[64:192] = np.concatenate([A, B], axis=1).view(np.uint8).reshape(-1)
    await engine.cuda_shm_register("in", raw_in, 1, 256)
    await engine.cuda_shm_register("out", raw_out, 1, 128)
    assert [(s.name, s.device_id, s.byte_size) for s in await engine.cuda_shm_status()] == [("in", 1, 256), ("out", 1, 128)]
    response = await engine.infer(simple_request("in", "out", offset=64))
    np.testing.assert_array_equal(memory_out[:64].view(np.int32).reshape(1, 16), A + B)
    np.testing.assert_array_equal(memory_out[64:].view(np.int32).reshape(1, 16), A - B)
    assert all(not any(array.strides) for array in response.outputs.values())  # no data in the answer
    assert sorted(cudart.copies()) == ["cudaMemcpyDeviceToHost"] * 2 + ["cudaMemcpyHostToDevice"] * 2
    await asyncio.wait_for(engine.cuda_shm_unregister(), 10)
    assert cudart.open_handles == set() and await engine.cuda_shm_status() == []


async def test_requests_from_several_cuda_regions_share_one_batch(
    repo: Path, open_engine: OpenEngine, cudart: FakeCudaRuntime
) -> None:
    opened = await open_engine(repo, execution_provider="cpu")
    engine = opened.engine
    engine.shared_memory = RegionTable(allowed=True)
    rng = np.random.default_rng(11)
    cases = []
    for index in range(6):
        data = rng.standard_normal((1, 16)).astype(np.float32)
        raw_in, memory_in = cudart.allocate(64)
        raw_out, memory_out = cudart.allocate(16)
        memory_in[:] = data.view(np.uint8).reshape(-1)
        await engine.cuda_shm_register(f"in{index}", raw_in, 0, 64)
        await engine.cuda_shm_register(f"out{index}", raw_out, 0, 16)
        want = (await engine.infer(InferRequest("mlp", "", {"INPUT": data}))).outputs["PROBABILITIES"]
        cases.append((memory_out, want))
    served = opened.registry.get("mlp", "")
    executions = served.stats.execution_count
    await infer_mlp_from_regions(engine, 6)
    assert served.stats.execution_count - executions < 6  # some requests shared a batch
    for memory_out, want in cases:
        np.testing.assert_allclose(memory_out.view(np.float32).reshape(1, 4), want, rtol=1e-6)
    await asyncio.wait_for(engine.cuda_shm_unregister(), 10)


async def test_mixed_inline_and_cuda_tensors(engine: Engine, cudart: FakeCudaRuntime) -> None:
    raw, memory = cudart.allocate(64)
    memory[:] = B.view(np.uint8).reshape(-1)
    await engine.cuda_shm_register("b", raw, 0, 64)
    request = InferRequest(
        "simple", "", {"INPUT0": A},
        requested_outputs=[RequestedOutput("OUTPUT1")],  # inline output only
        shared_inputs={"INPUT1": SharedInput("INT32", (1, 16), SharedMemoryRef("b", 64))},
    )  # fmt: skip
    response = await engine.infer(request)
    assert list(response.outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(response.outputs["OUTPUT1"], A - B)
    await engine.cuda_shm_unregister()


async def test_bad_cuda_tensors_are_refused_naming_region_and_numbers(
    engine: Engine, cudart: FakeCudaRuntime
) -> None:
    raw, _ = cudart.allocate(128)
    await engine.cuda_shm_register("r", raw, 0, 128)
    short = InferRequest(
        "simple", "", {"INPUT0": A}, shared_inputs={"INPUT1": SharedInput("INT32", (1, 16), SharedMemoryRef("r", 60))}
    )
    with pytest.raises(InvalidInput) as caught:
        await engine.infer(short)
    message = caught.value.message
    assert "'INPUT1'" in message and "60 bytes" in message and "needs 64" in message and "'r'" in message
    past = simple_request("r", None, offset=32)  # INPUT1 ends at 32 + 64 + 64 = 160 > 128
    with pytest.raises(InvalidInput, match="'INPUT1'.*offset 96 \\+ shared_memory_byte_size 64 = 160.*128 bytes.*'r'"):
        await engine.infer(past)
    text = InferRequest(
        "identity_bytes", "", {},
        shared_inputs={"INPUT0": SharedInput("BYTES", (1, 1), SharedMemoryRef("r", 8))},
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="'INPUT0': BYTES cannot be read from CUDA shared-memory region 'r'"):
        await engine.infer(text)
    text_out = InferRequest(
        "identity_bytes", "", {"INPUT0": np.array([[b"x"]], dtype=object)},
        requested_outputs=[RequestedOutput("OUTPUT0", shared_memory=SharedMemoryRef("r", 64))],
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="'OUTPUT0'.*BYTES.*cannot be written into CUDA shared-memory region 'r'"):
        await engine.infer(text_out)
    small = simple_request("r", None)
    small.requested_outputs = [RequestedOutput("OUTPUT0", shared_memory=SharedMemoryRef("r", 32))]
    with pytest.raises(InvalidInput, match="'OUTPUT0': shape \\[1, 16\\] of INT32 needs 64 bytes, more than its shared_memory_byte_size 32"):
        await engine.infer(small)
    await asyncio.wait_for(engine.cuda_shm_unregister(), 10)  # no lease was left behind


async def test_a_model_on_other_gpus_refuses_the_region_naming_model_tensor_region_and_device(
    cudart: FakeCudaRuntime,
) -> None:
    """Placement as a model on CUDA device 0 states it (no CUDA session can run here)."""
    table = RegionTable(allowed=True)
    raw, _ = cudart.allocate(128, device=1)
    await table.register_cuda("r", raw, 1, 128)
    lease = table.lease(simple_request("r", None))
    assert lease is not None
    on_gpu0 = Placement("model 'simple' version 1", bindable=True, device_type="cuda", device_ids=(0,))
    with pytest.raises(InvalidInput) as caught:
        lease.read_inputs({}, on_gpu0)
    message = caught.value.message
    assert all(part in message for part in ("model 'simple' version 1", "'INPUT0'", "'r'", "device 1", "device(s) 0"))
    on_gpu1 = Placement("model 'simple' version 1", bindable=True, device_type="cuda", device_ids=(0, 1))
    arrays = lease.read_inputs({}, on_gpu1)  # by pointer: placeholders, the tensors in the binding
    assert lease.binding is not None and set(lease.binding.inputs) == {"INPUT0", "INPUT1"}
    assert not any(arrays["INPUT0"].strides) and lease.binding.inputs["INPUT0"].memory.device_id == 1
    lease.release()
    await table.unregister_cuda()


async def test_unregister_waits_for_requests_and_the_handle_outlives_a_running_batch(cudart: FakeCudaRuntime) -> None:
    table = RegionTable(allowed=True)
    raw, memory = cudart.allocate(128)
    memory[:] = np.concatenate([A, B], axis=1).view(np.uint8).reshape(-1)
    await table.register_cuda("in", raw, 0, 128)
    lease = table.lease(simple_request("in", None))
    assert lease is not None
    lease.read_inputs({}, Placement("model 'simple' version 1", bindable=True))
    assert lease.binding is not None
    tensors = dict(lease.binding.inputs)  # what a batch still running for a cancelled request holds
    unregister = asyncio.ensure_future(table.unregister_cuda("in"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not unregister.done()  # held by the request
    with pytest.raises(InvalidInput, match="'in' is not registered"):
        table.lease(simple_request("in", None))
    lease.release()
    lease.binding = None
    await asyncio.wait_for(unregister, 10)
    assert len(cudart.open_handles) == 1  # the batch's tensors keep the handle open...
    del tensors
    gc.collect()
    assert cudart.open_handles == set()  # ...until they go


async def test_a_failing_copy_is_an_execution_error_naming_the_call(
    engine: Engine, cudart: FakeCudaRuntime
) -> None:
    raw, _ = cudart.allocate(256)
    await engine.cuda_shm_register("r", raw, 0, 256)
    cudart.fail_next["cudaMemcpy"] = cudart.cudaError_t.cudaErrorInvalidValue
    with pytest.raises(RuntimeServingError) as caught:
        await engine.infer(simple_request("r", None))
    assert caught.value.code is Code.INTERNAL
    assert "cudaMemcpy device to host of 64 bytes on CUDA device 0 failed: cudaErrorInvalidValue" in caught.value.message
    assert "model 'simple'" in caught.value.message
    await asyncio.wait_for(engine.cuda_shm_unregister(), 10)


async def test_which_models_take_tensors_by_pointer(tmp_path: Path, open_engine: OpenEngine) -> None:
    write_example_repository(tmp_path)
    registry = (await open_engine(tmp_path, execution_provider="cpu")).registry
    bindable = {record.name: record.served.placement.bindable for record in registry.records() if record.served}
    # processing (image_classifier, tabular_classifier) and strings (text) read inputs on the host
    assert bindable == {
        "image_classifier": False, "image_cnn": True, "mlp": True, "simple": True, "tabular_classifier": False, "text": False,
    }  # fmt: skip
    mlp = registry.get("mlp", "").placement
    assert (mlp.device_type, mlp.device_ids, mlp.batched, mlp.output_shapes) == ("cpu", (), True, {"PROBABILITIES": (-1, 4)})


async def test_a_model_reading_inputs_on_the_host_gets_them_copied_there(
    repo: Path, open_engine: OpenEngine, cudart: FakeCudaRuntime
) -> None:
    """mlp_reshaped is not bindable: its CUDA input is copied device to host when the request is read and
    its output host to device once the answer is made; the answer equals the plain mlp's."""
    opened = await open_engine(repo, execution_provider="cpu")
    engine = opened.engine
    engine.shared_memory = RegionTable(allowed=True)
    assert not opened.registry.get("mlp_reshaped", "").placement.bindable
    data = np.random.default_rng(9).standard_normal((2, 16)).astype(np.float32)
    raw_in, memory_in = cudart.allocate(data.nbytes)
    raw_out, memory_out = cudart.allocate(32)
    memory_in[:] = data.view(np.uint8).reshape(-1)
    await engine.cuda_shm_register("in", raw_in, 0, data.nbytes)
    await engine.cuda_shm_register("out", raw_out, 0, 32)
    request = InferRequest(
        "mlp_reshaped", "", {},
        requested_outputs=[RequestedOutput("PROBABILITIES", shared_memory=SharedMemoryRef("out", 32))],
        shared_inputs={"INPUT": SharedInput("FP32", (2, 16), SharedMemoryRef("in", data.nbytes))},
    )  # fmt: skip
    await engine.infer(request)
    want = (await engine.infer(InferRequest("mlp", "", {"INPUT": data}))).outputs["PROBABILITIES"]
    np.testing.assert_allclose(memory_out.view(np.float32).reshape(2, 4), want, rtol=1e-6)
    assert cudart.copies() == ["cudaMemcpyDeviceToHost", "cudaMemcpyHostToDevice"]
    await asyncio.wait_for(engine.cuda_shm_unregister(), 10)

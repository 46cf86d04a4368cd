"""Triton's system and CUDA shared-memory extensions end to end, with tritonclient's own helpers
(tritonclient.utils.shared_memory) over HTTP and gRPC (issue 14)."""
from __future__ import annotations

import base64
import itertools
import json
import queue
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import serialize_byte_tensor

from tests.serving import RunningServer
from tests.server.conftest import DATATYPES, Client, identity_name

_names = itertools.count()

class Regions:
    """Shared-memory objects made with tritonclient's helpers for one test, destroyed (and unregistered) after."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.handles: list[Any] = []

    def make(self, byte_size: int, register: bool = True, offset: int = 0, size: int | None = None) -> tuple[str, Any]:
        name = f"test_region_{next(_names)}"
        handle = shm.create_shared_memory_region(name, f"/{name}", byte_size)
        self.handles.append(handle)
        if register:
            self.client.triton.register_system_shared_memory(name, f"/{name}", byte_size if size is None else size, offset)
        return name, handle

    def close(self) -> None:
        self.client.triton.unregister_system_shared_memory()
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions(shm_either: Client) -> Iterator[Regions]:
    made = Regions(shm_either)
    try:
        yield made
    finally:
        made.close()


def status(client: Client, name: str = "") -> dict[str, tuple[str, int, int]]:
    """The registered system regions as name -> (key, offset, byte_size), over either protocol."""
    answer = client.triton.get_system_shared_memory_status(name) if name else client.triton.get_system_shared_memory_status()
    if client.protocol == "http":
        return {r["name"]: (r["key"], int(r["offset"]), int(r["byte_size"])) for r in answer}
    return {r.name: (r.key, int(r.offset), int(r.byte_size)) for r in answer.regions.values()}


def shm_input(client: Client, name: str, shape: list[int], datatype: str, region: str, byte_size: int, offset: int = 0) -> Any:
    tensor = client.module.InferInput(name, shape, datatype)
    tensor.set_shared_memory(region, byte_size, offset)
    return tensor


def shm_output(client: Client, name: str, region: str, byte_size: int, offset: int = 0) -> Any:
    output = client.module.InferRequestedOutput(name)
    output.set_shared_memory(region, byte_size, offset)
    return output


SIMPLE_A = np.arange(16, dtype=np.int32).reshape(1, 16)
SIMPLE_B = np.full((1, 16), 3, dtype=np.int32)


# ---- register, status, unregister -----------------------------------------------------------------------


def test_register_status_and_unregister(shm_either: Client, regions: Regions) -> None:
    first, _ = regions.make(256)
    second, _ = regions.make(8192, offset=4096, size=1024)
    listed = status(shm_either)
    assert listed[first] == (f"/{first}", 0, 256)
    assert listed[second] == (f"/{second}", 4096, 1024)
    assert status(shm_either, second) == {second: (f"/{second}", 4096, 1024)}
    shm_either.triton.unregister_system_shared_memory(first)
    assert first not in status(shm_either) and second in status(shm_either)
    shm_either.expect_error(lambda: status(shm_either, first), "NOT_FOUND", f"'{first}'")
    shm_either.triton.unregister_system_shared_memory("never_registered")  # no error, as Triton
    assert "system_shared_memory" in shm_either.server_metadata()["extensions"]


def test_unregister_all_answers_with_nothing_registered(shm_either: Client) -> None:
    # perf_analyzer does this at start and at exit, for both kinds, GPU or not.
    shm_either.triton.unregister_system_shared_memory()
    shm_either.triton.unregister_cuda_shared_memory()
    assert status(shm_either) == {}
    cuda = shm_either.triton.get_cuda_shared_memory_status()
    assert (list(cuda) if shm_either.protocol == "http" else list(cuda.regions)) == []


def test_cuda_register_without_a_gpu_says_so(shm_either: Client) -> None:
    raw = base64.b64encode(b"\0" * 64)
    shm_either.expect_error(
        lambda: shm_either.triton.register_cuda_shared_memory("cuda_region", raw, 0, 64),
        "FAILED_PRECONDITION",
        "CUDA shared memory needs a GPU",
    )


# ---- tensors in shared memory --------------------------------------------------------------------------


def test_inputs_and_outputs_at_offsets_inside_one_region(shm_either: Client, regions: Regions) -> None:
    inputs, in_handle = regions.make(256)
    outputs, out_handle = regions.make(256)
    shm.set_shared_memory_region(in_handle, [SIMPLE_A], offset=32)
    shm.set_shared_memory_region(in_handle, [SIMPLE_B], offset=128)
    result = shm_either.infer(
        "simple",
        [shm_input(shm_either, "INPUT0", [1, 16], "INT32", inputs, 64, 32), shm_input(shm_either, "INPUT1", [1, 16], "INT32", inputs, 64, 128)],
        outputs=[shm_output(shm_either, "OUTPUT0", outputs, 64, 64), shm_output(shm_either, "OUTPUT1", outputs, 64, 192)],
    )
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=64), SIMPLE_A + SIMPLE_B)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=192), SIMPLE_A - SIMPLE_B)
    answered = result.get_output("OUTPUT0")
    if shm_either.protocol == "http":
        # no parameters, as Triton: perf_analyzer's client reads binary_data_size from any that has them
        assert answered == {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]}
    else:
        assert list(answered.shape) == [1, 16] and answered.datatype == "INT32"
        assert answered.parameters["shared_memory_region"].string_param == outputs
        assert list(result.get_response().raw_output_contents) == [b"", b""]  # by position, as Triton


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"alpha", b"", "b\u00e9ta".encode(), b"nul\x00byte"]], dtype=np.object_)
    if datatype == "BOOL":
        return np.array([[True, False, True, True]])
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    return (np.arange(4) * 3 + 1).astype(dtype).reshape(1, 4)


def test_every_datatype_in_and_out_of_shared_memory(shm_either: Client, regions: Regions) -> None:
    for datatype in DATATYPES:
        data = sample(datatype)
        # tritonclient writes BYTES in the length-prefixed form it serialises them to
        written = serialize_byte_tensor(data) if datatype == "BYTES" else data
        size = len(written.item()) if datatype == "BYTES" else data.nbytes
        inputs, in_handle = regions.make(size + 8)
        outputs, out_handle = regions.make(size + 8)
        shm.set_shared_memory_region(in_handle, [written], offset=8)
        shm_either.infer(
            identity_name(datatype),
            [shm_input(shm_either, "INPUT0", [1, 4], datatype, inputs, size, 8)],
            outputs=[shm_output(shm_either, "OUTPUT0", outputs, size + 8)],
        )
        got = shm.get_contents_as_numpy(out_handle, np.object_ if datatype == "BYTES" else data.dtype, [1, 4])
        np.testing.assert_array_equal(got, data, err_msg=datatype)


def test_inputs_in_shared_memory_outputs_inline(shm_either: Client, regions: Regions) -> None:
    inputs, handle = regions.make(128)
    shm.set_shared_memory_region(handle, [SIMPLE_A, SIMPLE_B])
    result = shm_either.infer(
        "simple",
        [shm_input(shm_either, "INPUT0", [1, 16], "INT32", inputs, 64), shm_input(shm_either, "INPUT1", [1, 16], "INT32", inputs, 64, 64)],
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), SIMPLE_A + SIMPLE_B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), SIMPLE_A - SIMPLE_B)


def test_one_input_inline_one_in_shared_memory_and_outputs_mixed(shm_either: Client, regions: Regions) -> None:
    inputs, handle = regions.make(64)
    outputs, out_handle = regions.make(64)
    shm.set_shared_memory_region(handle, [SIMPLE_B])
    result = shm_either.infer(
        "simple",
        [shm_either.input("INPUT0", SIMPLE_A), shm_input(shm_either, "INPUT1", [1, 16], "INT32", inputs, 64)],
        outputs=[shm_output(shm_either, "OUTPUT0", outputs, 64), shm_either.output("OUTPUT1")],
    )
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16]), SIMPLE_A + SIMPLE_B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), SIMPLE_A - SIMPLE_B)


def test_inline_inputs_outputs_in_shared_memory(shm_either: Client, regions: Regions) -> None:
    outputs, out_handle = regions.make(128)
    shm_either.infer(
        "simple",
        [shm_either.input("INPUT0", SIMPLE_A), shm_either.input("INPUT1", SIMPLE_B)],
        outputs=[shm_output(shm_either, "OUTPUT1", outputs, 64, 64)],
    )
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=64), SIMPLE_A - SIMPLE_B)


def test_concurrent_requests_each_with_their_own_regions(shm_either: Client, regions: Regions) -> None:
    """Requests that the mlp's dynamic batcher may gather into one batch, each reading and writing its own
    regions; every answer lands in its own output region (batch formation itself: tests/shm/test_regions.py)."""
    count = 8
    made = []
    rng = np.random.default_rng(3)
    for _ in range(count):
        data = rng.standard_normal((1, 16)).astype(np.float32)
        inputs, handle = regions.make(64)
        outputs, out_handle = regions.make(16)
        shm.set_shared_memory_region(handle, [data])
        made.append((data, inputs, outputs, out_handle))
    expected = [shm_either.infer("mlp", [shm_either.input("INPUT", data)]).as_numpy("PROBABILITIES") for data, *_ in made]
    def tensors(inputs: str, outputs: str) -> dict[str, Any]:
        return {
            "inputs": [shm_input(shm_either, "INPUT", [1, 16], "FP32", inputs, 64)],
            "outputs": [shm_output(shm_either, "PROBABILITIES", outputs, 16)],
        }

    if shm_either.protocol == "http":
        pending = [shm_either.triton.async_infer("mlp", **tensors(inputs, outputs)) for _, inputs, outputs, _ in made]
        for each in pending:
            each.get_result()
    else:
        errors: queue.Queue[Any] = queue.Queue()
        for _, inputs, outputs, _ in made:
            shm_either.triton.async_infer("mlp", callback=lambda result, error: errors.put(error), **tensors(inputs, outputs))
        for _ in made:
            assert errors.get(timeout=30) is None
    for (_, _, _, out_handle), want in zip(made, expected):
        np.testing.assert_allclose(shm.get_contents_as_numpy(out_handle, np.float32, [1, 4]), want, rtol=1e-6)


def test_grpc_stream_with_shared_memory(shm_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(shm_server.grpc_url)
    face = Client("grpc", grpcclient, client)
    made = Regions(face)
    answers: queue.Queue[Any] = queue.Queue()
    try:
        inputs, handle = made.make(128)
        outputs, out_handle = made.make(128)
        shm.set_shared_memory_region(handle, [SIMPLE_A, SIMPLE_B])
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for index in range(2):
            client.async_stream_infer(
                "simple",
                [shm_input(face, "INPUT0", [1, 16], "INT32", inputs, 64), shm_input(face, "INPUT1", [1, 16], "INT32", inputs, 64, 64)],
                outputs=[shm_output(face, "OUTPUT0", outputs, 64, 64 * index)],
                request_id=str(index),
            )
        for _ in range(2):
            result, error = answers.get(timeout=30)
            assert error is None, error
        client.stop_stream()
        for index in range(2):
            np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=64 * index), SIMPLE_A + SIMPLE_B)
    finally:
        made.close()
        client.close()


# ---- bad input -----------------------------------------------------------------------------------------


def test_register_errors_name_region_key_and_numbers(shm_either: Client, regions: Regions) -> None:
    name, _ = regions.make(100)
    register = shm_either.triton.register_system_shared_memory
    shm_either.expect_error(lambda: register(name, f"/{name}", 100), "ALREADY_EXISTS", f"'{name}'", "already registered")
    shm_either.expect_error(lambda: register("other", f"/{name}", 80, 40), "INVALID_ARGUMENT", "'other'", "offset 40 + byte_size 80 = 120", "100 bytes")
    shm_either.expect_error(lambda: register("other", "/no_such_object_here", 8), "INVALID_ARGUMENT", "'/no_such_object_here'", "no shared-memory object")
    shm_either.expect_error(lambda: register("other", "/../etc/passwd", 8), "INVALID_ARGUMENT", "one path component")
    assert set(status(shm_either)) == {name}


def test_tensor_errors_name_region_tensor_and_numbers(shm_either: Client, regions: Regions) -> None:
    name, handle = regions.make(64)
    shm.set_shared_memory_region(handle, [SIMPLE_A])
    inline = shm_either.input("INPUT1", SIMPLE_B)

    def infer(*inputs: Any, outputs: Any = None) -> Any:
        return lambda: shm_either.infer("simple", list(inputs), outputs=outputs)

    shm_either.expect_error(infer(shm_input(shm_either, "INPUT0", [1, 16], "INT32", "unknown_region", 64), inline), "INVALID_ARGUMENT", "'INPUT0'", "'unknown_region'", "not registered")
    shm_either.expect_error(infer(shm_input(shm_either, "INPUT0", [1, 16], "INT32", name, 64, 32), inline), "INVALID_ARGUMENT", "'INPUT0'", f"'{name}'", "offset 32 + shared_memory_byte_size 64 = 96", "64 bytes")
    shm_either.expect_error(infer(shm_input(shm_either, "INPUT0", [1, 16], "INT32", name, 60), inline), "INVALID_ARGUMENT", "'INPUT0'", f"'{name}'", "60 bytes", "needs 64")
    shm_either.expect_error(
        infer(shm_either.input("INPUT0", SIMPLE_A), inline, outputs=[shm_output(shm_either, "OUTPUT0", name, 32)]),
        "INVALID_ARGUMENT", "'OUTPUT0'", f"'{name}'", "needs 64 bytes", "shared_memory_byte_size 32",
    )


def http_post(server: RunningServer, path: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", json.dumps(doc).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_http_data_and_region_on_one_tensor_is_refused(shm_server: RunningServer) -> None:
    tensor = {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": SIMPLE_A.ravel().tolist(),
              "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 64}}
    other = {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": SIMPLE_B.ravel().tolist()}
    code, body = http_post(shm_server, "/v2/models/simple/infer", {"inputs": [tensor, other]})
    assert code == 400 and "'INPUT0'" in body["error"] and "both data and shared_memory_region 'r'" in body["error"]
    code, body = http_post(shm_server, "/v2/systemsharedmemory/region/x/register", {"key": "/x", "byte_size": "big"})
    assert code == 400 and "'byte_size'" in body["error"] and "'x'" in body["error"]


def test_grpc_contents_and_region_on_one_tensor_is_refused(shm_server: RunningServer) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    import grpc

    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, data in (("INPUT0", SIMPLE_A), ("INPUT1", SIMPLE_B)):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(data.ravel().tolist())
    request.inputs[0].parameters["shared_memory_region"].string_param = "r"
    request.inputs[0].parameters["shared_memory_byte_size"].int64_param = 64
    with grpc.insecure_channel(shm_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'INPUT0'" in caught.value.details() and "both contents and shared_memory_region 'r'" in caught.value.details()


# ---- the security default ------------------------------------------------------------------------------


def test_register_is_refused_without_allow_client_shm(either: Client, server: RunningServer) -> None:
    name = f"test_region_{next(_names)}"
    handle = shm.create_shared_memory_region(name, f"/{name}", 64)
    try:
        either.expect_error(lambda: either.triton.register_system_shared_memory(name, f"/{name}", 64), "PERMISSION_DENIED", "--allow-client-shm true")
        assert status(either) == {}
        either.triton.unregister_system_shared_memory()  # still answers, for perf_analyzer
    finally:
        shm.destroy_shared_memory_region(handle)

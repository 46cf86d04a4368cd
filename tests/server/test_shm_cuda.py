"""Tensors in CUDA shared memory end to end over HTTP and gRPC, on a machine without a GPU (issue 14).

The server runs with cuda-python's runtime module replaced by tests/shm/fake_cudart.py (put first on its
path): a raw IPC handle the test makes names a POSIX shared-memory object, which the fake maps as the
server's "device" allocation, so the test can write inputs and read outputs with tritonclient's system
shared-memory helpers. The transports, the front-end/engine hop (--workers 3), the region table, the lease
and the IO-binding executor (a CPU session: explicit device-to-host and host-to-device copies) all run
for real; only what a GPU does is left to bench/gpu_check_cuda_shm.py.
"""
from __future__ import annotations

import base64
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

from tests.serving import RunningServer, running_server
from tests.server.conftest import MAX_REQUEST_BYTES, Client
from tests.server.test_shm import shm_input, shm_output
from tests.shm.fake_cudart import handle_for_object, install_for_subprocesses

_names = itertools.count()
A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)


@pytest.fixture(scope="module", params=[1, 3], ids=["workers1", "workers3"])
def cuda_server(
    repository: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    env = install_for_subprocesses(tmp_path_factory.mktemp("fake-cuda-site"))
    with running_server(
        repository,
        tmp_path_factory.mktemp("cuda-shm-server"),
        extra_args=["--max-request-bytes", str(MAX_REQUEST_BYTES), "--allow-client-shm", "true", "--execution-provider", "cpu"],
        env=env,
        workers=request.param,
    ) as running:
        yield running


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, cuda_server: RunningServer) -> Iterator[Client]:
    module: Any = httpclient if request.param == "http" else grpcclient
    url = cuda_server.http_url if request.param == "http" else cuda_server.grpc_url
    made = Client(request.param, module, module.InferenceServerClient(url))
    yield made
    made.triton.unregister_cuda_shared_memory()
    made.triton.close()


class Device:
    """'Device' allocations for one test: POSIX objects the fake server maps, registered as CUDA regions."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.handles: list[Any] = []

    def region(self, byte_size: int, device: int = 0) -> tuple[str, Any]:
        name = f"test_cuda_{os.getpid()}_{next(_names)}"
        handle = shm.create_shared_memory_region(name, f"/{name}", byte_size)
        self.handles.append(handle)
        raw = base64.b64encode(handle_for_object(f"/{name}", device))
        self.client.triton.register_cuda_shared_memory(name, raw, device, byte_size)
        return name, handle

    def close(self) -> None:
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture
def device(client: Client) -> Iterator[Device]:
    made = Device(client)
    yield made
    made.close()


def cuda_status(client: Client) -> dict[str, tuple[int, int]]:
    answer = client.triton.get_cuda_shared_memory_status()
    if client.protocol == "http":
        return {r["name"]: (int(r["device_id"]), int(r["byte_size"])) for r in answer}
    return {r.name: (int(r.device_id), int(r.byte_size)) for r in answer.regions.values()}


def test_inputs_and_outputs_in_cuda_regions(client: Client, device: Device) -> None:
    inputs, in_handle = device.region(256, device=1)
    outputs, out_handle = device.region(256, device=1)
    shm.set_shared_memory_region(in_handle, [A, B], offset=32)
    assert cuda_status(client)[inputs] == (1, 256)
    result = client.infer(
        "simple",
        [shm_input(client, "INPUT0", [1, 16], "INT32", inputs, 64, 32), shm_input(client, "INPUT1", [1, 16], "INT32", inputs, 64, 96)],
        outputs=[shm_output(client, "OUTPUT0", outputs, 64, 0), shm_output(client, "OUTPUT1", outputs, 64, 128)],
    )
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], 0), A + B)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], 128), A - B)
    answered = result.get_output("OUTPUT0")  # written into the region: no data in the answer
    if client.protocol == "http":
        assert answered == {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]}
    else:
        assert list(result.get_response().raw_output_contents) == [b"", b""]
    client.triton.unregister_cuda_shared_memory(inputs)
    assert inputs not in cuda_status(client) and outputs in cuda_status(client)


def test_mixed_inline_and_cuda_tensors(client: Client, device: Device) -> None:
    region, handle = device.region(64)
    shm.set_shared_memory_region(handle, [B])
    result = client.infer(
        "simple", [client.input("INPUT0", A), shm_input(client, "INPUT1", [1, 16], "INT32", region, 64)], outputs=[client.output("OUTPUT1")]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


def test_bad_cuda_tensors_are_refused(client: Client, device: Device) -> None:
    region, _ = device.region(128)
    client.expect_error(
        lambda: client.infer("simple", [client.input("INPUT0", A), shm_input(client, "INPUT1", [1, 16], "INT32", region, 60)]),
        "INVALID_ARGUMENT", "'INPUT1'", "60 bytes", "needs 64", f"'{region}'",
    )  # fmt: skip
    client.expect_error(
        lambda: client.infer("identity_bytes", [shm_input(client, "INPUT0", [1, 1], "BYTES", region, 8)]),
        "INVALID_ARGUMENT", "'INPUT0'", "BYTES cannot be read from CUDA shared-memory region", f"'{region}'",
    )  # fmt: skip
    client.expect_error(
        lambda: client.infer(
            "simple", [client.input("INPUT0", A), client.input("INPUT1", B)], outputs=[shm_output(client, "OUTPUT0", region, 32)]
        ),
        "INVALID_ARGUMENT", "'OUTPUT0'", "needs 64 bytes", "shared_memory_byte_size 32",
    )  # fmt: skip

"""One real server for the protocol tests, over a repository that exercises every datatype."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from runtime.examples import save_model, write_example_repository
from tests.models import build_identity
from tests.serving import RunningServer, running_server

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
MAX_REQUEST_BYTES = 4 * 1024 * 1024


def identity_name(datatype: str) -> str:
    return f"identity_{datatype.lower()}"


def build_test_repository(root: Path) -> Path:
    write_example_repository(root)
    for datatype in DATATYPES:
        save_model(build_identity(datatype), root, identity_name(datatype))
    # Two versions of one model: version 2 is served by default, version 1 by number.
    policy = 'version_policy { all { } }\n'
    save_model(build_identity("FP32"), root, "versioned", 1, config_pbtxt=policy)
    save_model(build_identity("FP32"), root, "versioned", 2, config_pbtxt=policy)
    corrupt = root / "corrupt" / "1"
    corrupt.mkdir(parents=True)
    (corrupt / "model.onnx").write_bytes(b"this is not an onnx model")
    save_model(build_identity("INT32"), root, "bad_config", config_pbtxt='name: "bad_config"\nsequence_batching { iterative_sequence: true }\n')
    return root


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session", params=[1, 3], ids=["workers1", "workers3"])
def server(
    repository: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    """The protocol suite runs against one process and against --workers 3 (supervisor, engine, 3 front ends)."""
    with running_server(
        repository,
        tmp_path_factory.mktemp("server"),
        extra_args=["--max-request-bytes", str(MAX_REQUEST_BYTES)],
        workers=request.param,
    ) as running:
        yield running


# ---- one client over either protocol -------------------------------------------------------------------

STATUS = {  # what each client reports for a core error code
    "http": {
        "INVALID_ARGUMENT": "400",
        "NOT_FOUND": "404",
        "UNAVAILABLE": "503",
        "TOO_LARGE": "413",
        "PERMISSION_DENIED": "403",
        "ALREADY_EXISTS": "409",
        "FAILED_PRECONDITION": "409",
    },
    "grpc": {
        "INVALID_ARGUMENT": "StatusCode.INVALID_ARGUMENT",
        "NOT_FOUND": "StatusCode.NOT_FOUND",
        "UNAVAILABLE": "StatusCode.UNAVAILABLE",
        "TOO_LARGE": "StatusCode.RESOURCE_EXHAUSTED",
        "PERMISSION_DENIED": "StatusCode.PERMISSION_DENIED",
        "ALREADY_EXISTS": "StatusCode.ALREADY_EXISTS",
        "FAILED_PRECONDITION": "StatusCode.FAILED_PRECONDITION",
    },
}


@dataclass
class Client:
    """tritonclient.http or tritonclient.grpc behind one face, for tests of behaviour both protocols share."""

    protocol: str  # "http" or "grpc"
    module: ModuleType
    triton: Any  # the module's InferenceServerClient

    def input(self, name: str, data: np.ndarray, datatype: str | None = None) -> Any:
        tensor = self.module.InferInput(name, list(data.shape), datatype or np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data)
        return tensor

    def output(self, name: str) -> Any:
        return self.module.InferRequestedOutput(name)

    def infer(self, model: str, inputs: list[Any], **kwargs: Any) -> Any:
        return self.triton.infer(model, inputs, **kwargs)

    def response_fields(self, result: Any) -> tuple[str, str, str]:
        """(model_name, model_version, id) of an infer result."""
        response = result.get_response()
        if self.protocol == "http":
            return response["model_name"], response["model_version"], response.get("id", "")
        return response.model_name, response.model_version, response.id

    def server_metadata(self) -> dict[str, Any]:
        metadata = self.triton.get_server_metadata()
        if self.protocol == "http":
            return {"name": metadata["name"], "extensions": list(metadata["extensions"])}
        return {"name": metadata.name, "extensions": list(metadata.extensions)}

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        """name, versions, platform, and inputs and outputs as (name, datatype, shape)."""
        metadata = self.triton.get_model_metadata(model, version)
        if self.protocol == "http":
            tensors = {key: [(t["name"], t["datatype"], list(t["shape"])) for t in metadata[key]] for key in ("inputs", "outputs")}
            return {"name": metadata["name"], "versions": list(metadata["versions"]), "platform": metadata["platform"], **tensors}
        tensors = {key: [(t.name, t.datatype, list(t.shape)) for t in getattr(metadata, key)] for key in ("inputs", "outputs")}
        return {"name": metadata.name, "versions": list(metadata.versions), "platform": metadata.platform, **tensors}

    def model_config(self, model: str) -> dict[str, Any]:
        """The configuration as JSON (protobuf's JSON names; gRPC's int64 fields come back as strings)."""
        if self.protocol == "http":
            config: dict[str, Any] = self.triton.get_model_config(model)
            return config
        config = self.triton.get_model_config(model, as_json=True)["config"]
        return config

    def expect_error(self, call: Callable[[], Any], code: str, *fragments: str) -> str:
        """`call` fails with the core error `code` (INVALID_ARGUMENT, NOT_FOUND, ...) naming every fragment."""
        with pytest.raises(InferenceServerException) as caught:
            call()
        message = caught.value.message()
        assert str(caught.value.status()) == STATUS[self.protocol][code], f"{caught.value.status()}: {message}"
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        return message


def protocol_client(protocol: str, server: RunningServer) -> Client:
    """A Client for `server` over "http" or "grpc" (for `either` fixtures of other test folders too)."""
    if protocol == "http":
        return Client("http", httpclient, httpclient.InferenceServerClient(server.http_url))
    return Client("grpc", grpcclient, grpcclient.InferenceServerClient(server.grpc_url))


@pytest.fixture(scope="module", params=["http", "grpc"])
def either(request: pytest.FixtureRequest, server: RunningServer) -> Client:
    """The same tests over HTTP and gRPC (ids `http` and `grpc`)."""
    return protocol_client(request.param, server)


# ---- shared memory (issue 14) ----------------------------------------------------------------------


@pytest.fixture(scope="session", params=[(1, False), (3, False), (1, True)], ids=["workers1", "workers3", "io_binding"])
def shm_server(
    repository: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    """The protocol repository served with --allow-client-shm true, in one process and with --workers 3
    (the engine process maps the regions; the front ends forward register, status and unregister), and
    with --shm-io-binding true (system-shm tensors by pointer through ONNX Runtime's IO binding)."""
    workers, io_binding = request.param
    with running_server(
        repository,
        tmp_path_factory.mktemp("shm-server"),
        extra_args=[
            "--max-request-bytes", str(MAX_REQUEST_BYTES), "--allow-client-shm", "true",
            "--shm-io-binding", str(io_binding).lower(),
        ],
        workers=workers,
    ) as running:
        yield running


@pytest.fixture(scope="module", params=["http", "grpc"])
def shm_either(request: pytest.FixtureRequest, shm_server: RunningServer) -> Client:
    """`either` against shm_server."""
    if request.param == "http":
        return Client("http", httpclient, httpclient.InferenceServerClient(shm_server.http_url))
    return Client("grpc", grpcclient, grpcclient.InferenceServerClient(shm_server.grpc_url))

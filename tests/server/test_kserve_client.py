"""KServe's own Python SDK clients (V2 REST and gRPC) against a real server, next to tritonclient.

The SDK's clients run in a child process: its generated `inference.*` protobuf messages carry the same
full names as tritonclient's, which one protobuf pool refuses to hold twice, and importing `kserve`
sets up its own logging and warnings, which this test process should not inherit.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.serving import RunningServer

# The SDK is in the test extra: a missing one fails the tests (ImportError in the child), never skips.
# It is not imported here: that would register its protobuf messages in this process.

CLIENT = r'''
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

http_url, grpc_url = sys.argv[1], sys.argv[2]

def request(binary):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    inputs = [InferInput("INPUT0", [1, 16], "INT32"), InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return InferRequest(model_name="simple", infer_inputs=inputs, request_id="kserve-1")

async def main():
    out = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        out["rest_live"] = await rest.is_server_live(http_url)
        out["rest_ready"] = await rest.is_server_ready(http_url)
        out["rest_model_ready"] = await rest.is_model_ready(http_url, "simple")
        out["rest_corrupt_ready"] = await rest.is_model_ready(http_url, "corrupt")
        for binary in (False, True):
            response = await rest.infer(http_url, request(binary), model_name="simple")
            out[f"rest_infer_{binary}"] = [response.id, response.get_output_by_name("OUTPUT0").as_numpy().tolist()]
    finally:
        await rest.close()
    grpc_client = InferenceGRPCClient(grpc_url, timeout=30)
    try:
        out["grpc_live"] = await grpc_client.is_server_live()
        out["grpc_ready"] = await grpc_client.is_server_ready()
        out["grpc_model_ready"] = await grpc_client.is_model_ready("simple")
        response = await grpc_client.infer(request(False))
        out["grpc_infer"] = [response.id, response.get_output_by_name("OUTPUT0").as_numpy().tolist()]
    finally:
        await grpc_client.close()
    print("RESULT " + json.dumps(out))

asyncio.run(main())
'''


def run_kserve_clients(server: RunningServer) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", CLIENT, f"http://{server.http_url}", server.grpc_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, f"rc {completed.returncode}\n{completed.stdout}\n{completed.stderr[-4000:]}"
    result: dict[str, object] = json.loads(lines[-1][len("RESULT "):])
    return result


@pytest.fixture(scope="module")
def kserve_results(server: RunningServer) -> dict[str, object]:
    return run_kserve_clients(server)


SUM = [[i + 3 for i in range(16)]]


def test_rest_client_health(kserve_results: dict[str, object]) -> None:
    # is_server_live/ready parse the V2 JSON body ({"live": true}); an empty body raised JSONDecodeError.
    assert kserve_results["rest_live"] is True
    assert kserve_results["rest_ready"] is True
    assert kserve_results["rest_model_ready"] is True
    assert kserve_results["rest_corrupt_ready"] is False


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_rest_client_infer(kserve_results: dict[str, object], binary: bool) -> None:
    assert kserve_results[f"rest_infer_{binary}"] == ["kserve-1", SUM]


def test_grpc_client_health_and_infer(kserve_results: dict[str, object]) -> None:
    assert kserve_results["grpc_live"] is True
    assert kserve_results["grpc_ready"] is True
    assert kserve_results["grpc_model_ready"] is True
    assert kserve_results["grpc_infer"] == ["kserve-1", SUM]

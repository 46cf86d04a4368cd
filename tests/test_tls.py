"""TLS on the HTTP and gRPC ports (--tls-cert-file, --tls-key-file), and mutual TLS (--tls-client-ca-file),
with certificates the test makes (trustme). The metrics port stays plain HTTP, like Triton's.
"""
from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
from tests.serving import RunningServer, running_server, start_server

from runtime.examples import write_example_repository
from runtime._pb import grpc_service_pb2 as pb

trustme = pytest.importorskip("trustme")

MLP = {"inputs": [{"name": "INPUT", "shape": [1, 16], "datatype": "FP32", "data": [0.25] * 16}]}


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path  # certificate and key in one PEM
    stranger_cert: Path  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.test")
    stranger = trustme.CA().issue_cert("stranger@example.test")
    files = Pki(root / "ca.pem", root / "server.pem", root / "server.key", root / "client.pem", root / "stranger.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.cert))
    server.private_key_pem.write_to_path(str(files.key))
    client.private_key_and_cert_chain_pem.write_to_path(str(files.client_cert))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(files.stranger_cert))
    return files


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_repository(tmp_path_factory.mktemp("repo"))


def tls_args(pki: Pki, mutual: bool) -> list[str]:
    args = ["--tls-cert-file", str(pki.cert), "--tls-key-file", str(pki.key)]
    return args + (["--tls-client-ca-file", str(pki.ca)] if mutual else [])


@pytest.fixture(scope="module")
def tls_server(repository: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(repository, tmp_path_factory.mktemp("tls"), tls_args(pki, mutual=False)) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(repository: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(repository, tmp_path_factory.mktemp("mtls"), tls_args(pki, mutual=True)) as server:
        yield server


def client_context(pki: Pki, cert: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert))
    return context


async def https_infer(url: str, context: ssl.SSLContext | bool) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, force_close=True)) as session:
        async with session.post(f"{url}/v2/models/mlp/infer", json=MLP, timeout=aiohttp.ClientTimeout(total=10)) as r:
            doc = await r.json()
            assert r.status != 200 or doc["outputs"][0]["name"] == "PROBABILITIES"
            return r.status


async def grpc_infer(channel: grpc.aio.Channel) -> grpc.StatusCode:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.full((1, 16), 0.25, dtype=np.float32).tobytes())
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    try:
        await call(request, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def secure_channel(server: RunningServer, pki: Pki, client: Path | None = None) -> grpc.aio.Channel:
    key = cert = None
    if client is not None:
        pem = client.read_bytes()
        key, cert = pem, pem
    credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes(), private_key=key, certificate_chain=cert)
    return grpc.aio.secure_channel(f"localhost:{server.grpc_port}", credentials)


async def test_https_and_grpc_over_tls(tls_server: RunningServer, pki: Pki) -> None:
    url = f"https://127.0.0.1:{tls_server.http_port}"
    assert await https_infer(url, client_context(pki)) == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):  # the server's certificate is checked
        await https_infer(url, ssl.create_default_context())
    with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served on the TLS port
        await https_infer(f"http://127.0.0.1:{tls_server.http_port}", False)

    async with secure_channel(tls_server, pki) as channel:
        assert await grpc_infer(channel) == grpc.StatusCode.OK
    async with grpc.aio.insecure_channel(tls_server.grpc_url) as channel:
        assert await grpc_infer(channel) == grpc.StatusCode.UNAVAILABLE

    async with aiohttp.ClientSession() as session, session.get(tls_server.metrics_url) as response:
        assert response.status == 200  # metrics: plain HTTP


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(mtls_server: RunningServer, pki: Pki) -> None:
    url = f"https://127.0.0.1:{mtls_server.http_port}"
    assert await https_infer(url, client_context(pki, pki.client_cert)) == 200
    for refused in (client_context(pki), client_context(pki, pki.stranger_cert)):
        with pytest.raises(aiohttp.ClientError):
            await https_infer(url, refused)

    async with secure_channel(mtls_server, pki, pki.client_cert) as channel:
        assert await grpc_infer(channel) == grpc.StatusCode.OK
    for client in (None, pki.stranger_cert):
        async with secure_channel(mtls_server, pki, client) as channel:
            assert await grpc_infer(channel) == grpc.StatusCode.UNAVAILABLE
    assert mtls_server.process.poll() is None


def test_half_a_tls_configuration_is_refused_at_start(repository: Path, pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="needs both --tls-cert-file and --tls-key-file"):
        server = start_server(repository, tmp_path, ["--tls-cert-file", str(pki.cert)])
        server.stop()

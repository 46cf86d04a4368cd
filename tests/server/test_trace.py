"""Triton's trace extension (runtime/server/trace.py) on a real server, with tritonclient over HTTP and gRPC:
settings read and changed at run time, per model, behind the admin token; spans follow the settings."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.utils import InferenceServerException

from runtime._pb import grpc_service_pb2 as pb
from runtime.examples import save_model
from tests.models import build_identity
from tests.serving import RunningServer, running_server
from tests.tracing.collector import EXPORT_ENV, Collector, grpc_collector

TOKEN = "trace-admin-token"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Collector]]:
    root = tmp_path_factory.mktemp("trace-ext")
    for name in ("quiet", "loud"):
        save_model(build_identity("FP32"), root / "models", name)
    with grpc_collector() as collector:
        args = [
            "--trace-otlp-endpoint", collector.endpoint, "--trace-rate", "1", "--trace-level", "off",
            "--admin-token", TOKEN,
        ]
        with running_server(root / "models", root / "server", args, env=EXPORT_ENV) as server:
            yield server, collector


AUTH = {"authorization": f"Bearer {TOKEN}"}


def get(server: RunningServer, protocol: str, model: str = "") -> dict[str, Any]:
    """The settings as {key: str | [str]} over either protocol."""
    if protocol == "http":
        with httpclient.InferenceServerClient(server.http_url) as client:
            result: dict[str, Any] = client.get_trace_settings(model_name=model or None, headers=AUTH)
            return result
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        reply = client.get_trace_settings(model_name=model or None, headers=AUTH)
        return _flat(reply)


def update(server: RunningServer, protocol: str, settings: dict[str, Any], model: str = "", headers: Any = AUTH) -> dict[str, Any]:
    if protocol == "http":
        with httpclient.InferenceServerClient(server.http_url) as client:
            result: dict[str, Any] = client.update_trace_settings(model_name=model or None, settings=settings, headers=headers)
            return result
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return _flat(client.update_trace_settings(model_name=model or None, settings=settings, headers=headers))


def _flat(reply: Any) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in reply.settings.items():
        flat[key] = list(value.value) if key == "trace_level" else value.value[0]
    return flat


def infer(server: RunningServer, model: str) -> None:
    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput("INPUT0", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
        client.infer(model, [tensor], request_id=secrets.token_hex(4))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_settings_read_as_tritons(traced: tuple[RunningServer, Collector], protocol: str) -> None:
    server, _ = traced
    assert get(server, protocol) == {
        "trace_file": "",
        "trace_level": ["OFF"],
        "trace_rate": "1",
        "trace_count": "-1",
        "log_frequency": "0",
        "trace_mode": "opentelemetry",
    }


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_turning_tracing_on_for_one_model(traced: tuple[RunningServer, Collector], protocol: str) -> None:
    server, collector = traced
    changed = update(server, protocol, {"trace_level": ["TIMESTAMPS"]}, model="loud")
    assert changed["trace_level"] == ["TIMESTAMPS"]
    assert get(server, protocol)["trace_level"] == ["OFF"]  # the global setting is untouched
    try:
        before = len(collector.spans())
        infer(server, "quiet")
        infer(server, "loud")  # ends after quiet's request: exported after anything quiet left
        spans = collector.wait_for(
            lambda spans: any(s.attributes.get("model_runtime.model") == "loud" for s in spans[before:]), "loud's span"
        )
        assert {s.attributes.get("model_runtime.model") for s in spans[before:] if s.name == "InferRequest"} == {"loud"}
    finally:
        cleared = update(server, protocol, {"trace_level": None}, model="loud")
    assert cleared["trace_level"] == ["OFF"]  # back to the global value


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_settings_and_unknown_models_are_the_clients_errors(traced: tuple[RunningServer, Collector], protocol: str) -> None:
    server, _ = traced
    status = {"http": ("400", "404"), "grpc": ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND")}[protocol]
    with pytest.raises(InferenceServerException) as bad:
        update(server, protocol, {"trace_rate": "0"})
    assert bad.value.status() == status[0] and "trace_rate 0 is out of range" in bad.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        get(server, protocol, model="missing")
    assert unknown.value.status() == status[1] and "missing" in unknown.value.message()
    assert get(server, protocol)["trace_rate"] == "1"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_admin_token_is_required(traced: tuple[RunningServer, Collector], protocol: str) -> None:
    server, _ = traced
    with pytest.raises(InferenceServerException) as refused:
        update(server, protocol, {"trace_rate": "5"}, headers={"authorization": "Bearer wrong"})
    assert refused.value.status() == {"http": "401", "grpc": "StatusCode.UNAUTHENTICATED"}[protocol]
    assert get(server, protocol)["trace_rate"] == "1"


@pytest.mark.parametrize(
    "message", ["TraceSettingRequest", "TraceSettingResponse", "LogSettingsRequest", "LogSettingsResponse"]
)
def test_messages_are_tritons_on_the_wire(message: str) -> None:
    ours, theirs = descriptor_pb2.DescriptorProto(), descriptor_pb2.DescriptorProto()
    getattr(pb, message).DESCRIPTOR.CopyToProto(ours)
    getattr(triton_pb, message).DESCRIPTOR.CopyToProto(theirs)
    assert ours == theirs
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert methods["TraceSetting"] == ("TraceSettingRequest", "TraceSettingResponse")
    assert methods["LogSettings"] == ("LogSettingsRequest", "LogSettingsResponse")

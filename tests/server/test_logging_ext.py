"""Triton's logging extension (runtime/server/logging_ext.py) on a real server, with tritonclient over HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serving import RunningServer, running_server

TOKEN = "log-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module", params=[1, 3], ids=["workers1", "workers3"])
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with running_server(
        None, tmp_path_factory.mktemp("logging-ext"), ["--admin-token", TOKEN], workers=request.param
    ) as running:
        yield running


def _flat(reply: Any) -> dict[str, Any]:
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in reply.settings.items()}


def settings(server: RunningServer, protocol: str, changes: dict[str, Any] | None = None, headers: Any = AUTH) -> dict[str, Any]:
    if protocol == "http":
        with httpclient.InferenceServerClient(server.http_url) as client:
            if changes is None:
                result: dict[str, Any] = client.get_log_settings(headers=headers)
            else:
                result = client.update_log_settings(changes, headers=headers)
            return result
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        if changes is None:
            return _flat(client.get_log_settings(headers=headers))
        return _flat(client.update_log_settings(changes, headers=headers))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_log_settings_read_and_change(server: RunningServer, protocol: str) -> None:
    assert settings(server, protocol) == {
        "log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0, "log_format": "default",
    }
    try:
        changed = settings(server, protocol, {"log_info": False, "log_verbose_level": 2})
        assert (changed["log_info"], changed["log_verbose_level"]) == (False, 2)
        assert settings(server, "grpc" if protocol == "http" else "http")["log_info"] is False  # one setting, both ports
    finally:
        settings(server, protocol, {"log_info": True, "log_verbose_level": 0})


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_settings_and_missing_tokens_are_refused(server: RunningServer, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as bad:
        settings(server, protocol, {"log_format": "xml"})
    assert bad.value.status() == {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}[protocol]
    assert "log_format must be one of" in bad.value.message()
    with pytest.raises(InferenceServerException) as refused:
        settings(server, protocol, headers={})
    assert refused.value.status() == {"http": "401", "grpc": "StatusCode.UNAUTHENTICATED"}[protocol]


def test_a_change_reaches_every_process(server: RunningServer) -> None:
    """With --workers N a change through one front end is made in every process (through the engine):
    every fresh connection, whichever front end SO_REUSEPORT gives it, reads it."""
    settings(server, "http", {"log_warning": False, "log_verbose_level": 1})
    try:
        for _ in range(12):
            for protocol in ("http", "grpc"):
                current = settings(server, protocol)
                assert (current["log_warning"], current["log_verbose_level"]) == (False, 1), protocol
    finally:
        settings(server, "http", {"log_warning": True, "log_verbose_level": 0})
    assert settings(server, "grpc")["log_verbose_level"] == 0

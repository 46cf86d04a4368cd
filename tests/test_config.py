"""Settings come from flags, environment and a TOML file, in that order of precedence."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.cli import build_parser
from runtime.config import Settings, from_sources


def test_defaults_match_triton_ports() -> None:
    settings = Settings()
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (8000, 8001, 8002)
    assert settings.max_request_bytes == 64 * 1024 * 1024


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "runtime.toml"
    config.write_text('http_port = 9100\ngrpc-port = 9101\nmetrics_port = 9102\nallow_spinning = true\n')
    environ = {"MODEL_RUNTIME_GRPC_PORT": "9201", "MODEL_RUNTIME_METRICS_PORT": "9202"}
    settings = from_sources({"metrics_port": "9302"}, environ, config)
    assert settings.http_port == 9100  # file
    assert settings.grpc_port == 9201  # env beats file
    assert settings.metrics_port == 9302  # flag beats env
    assert settings.allow_spinning is True


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"http_port": "eighty"}, "http_port"),
        ({"execution_provider": "tpu"}, "auto, cuda, cpu"),
        ({"allow_http": "maybe"}, "not a boolean"),
    ],
)
def test_bad_values_are_named(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_sources(values, {})


def test_unknown_file_key(tmp_path: Path) -> None:
    config = tmp_path / "runtime.toml"
    config.write_text("http_prot = 1\n")
    with pytest.raises(ValueError, match="unknown key 'http_prot'"):
        from_sources({}, {}, config)


def test_cli_flags_parse_like_tritonserver() -> None:
    args = build_parser().parse_args(
        ["serve", "--model-repository", "/models", "--http-port", "1", "--allow-grpc", "false",
         "--allow-spinning", "--load-model", "a", "--load-model", "b"]
    )
    values = {name: getattr(args, name) for name in ("model_repository", "http_port", "allow_grpc", "allow_spinning", "load_model")}
    settings = from_sources(values, {})
    assert settings.model_repository == Path("/models")
    assert settings.http_port == 1 and settings.allow_grpc is False and settings.allow_spinning is True
    assert settings.load_model == ["a", "b"]


def test_help_documents_env_and_file_keys() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "runtime", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "MODEL_RUNTIME_HTTP_PORT" in help_text and "File key: http_port" in help_text
    assert "Default: 8000" in help_text


def test_version_names_the_codec() -> None:
    out = subprocess.run([sys.executable, "-m", "runtime", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("model-runtime ") and ("cython" in out or "python" in out)

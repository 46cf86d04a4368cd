"""Settings come from flags, environment and a TOML file, in that order of precedence."""
from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from runtime.cli import build_parser, main
from runtime.config import Settings, from_sources, setting_ranges


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


# ---- every numeric setting has a range, checked before anything starts -------------------------


def _numeric_fields() -> set[str]:
    numeric = set()
    for name, hint in typing.get_type_hints(Settings).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if any(a in (int, float) for a in args):
            numeric.add(name)
    return numeric


def test_every_numeric_setting_has_a_range() -> None:
    assert _numeric_fields() == set(setting_ranges())


def _outside(name: str) -> list[str]:
    allowed = setting_ranges()[name]
    is_int = int in typing.get_args(typing.get_type_hints(Settings)[name]) or typing.get_type_hints(Settings)[name] is int
    step = 1 if is_int else 0.5
    values = [allowed.low if allowed.low_open else allowed.low - step, allowed.high + step]
    shown = [str(int(v)) if is_int else repr(float(v)) for v in values]
    return shown + ([] if is_int else ["nan", "inf"])


def _edges(name: str) -> list[str]:
    allowed = setting_ranges()[name]
    is_int = int in typing.get_args(typing.get_type_hints(Settings)[name]) or typing.get_type_hints(Settings)[name] is int
    low = allowed.low + (0.001 if allowed.low_open else 0)
    return [str(int(v)) if is_int else repr(float(v)) for v in (low, allowed.high)]


OUT_OF_RANGE = [pytest.param(name, raw, id=f"{name}={raw}") for name in sorted(setting_ranges()) for raw in _outside(name)]
EDGES = [pytest.param(name, raw, id=f"{name}={raw}") for name in sorted(setting_ranges()) for raw in _edges(name)]


@pytest.mark.parametrize(("name", "raw"), OUT_OF_RANGE)
def test_a_number_out_of_range_stops_the_cli_with_exit_code_2(
    name: str, raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--" + name.replace("_", "-"), raw])
    assert stopped.value.code == 2
    assert f"{name}: {raw} is out of range; it must be {setting_ranges()[name].describe()}" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "raw"), EDGES)
def test_numbers_at_the_edges_are_accepted(name: str, raw: str) -> None:
    settings = from_sources({name: raw}, {})
    assert float(getattr(settings, name)) == float(raw)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MODEL_RUNTIME_INTRA_OP_THREADS": "100000"}, "intra_op_threads: 100000 is out of range"),
        ({"MODEL_RUNTIME_EXIT_TIMEOUT_SECS": "-1"}, "exit_timeout_secs: -1.0 is out of range"),
        ({"MODEL_RUNTIME_METRICS_LATENCY_BUCKETS": "0.1,0.05"}, "'0.05' is not above the bound before it"),
        ({"MODEL_RUNTIME_METRICS_LATENCY_BUCKETS": "0.1,-1"}, "'-1' is out of range"),
        ({"MODEL_RUNTIME_METRICS_LATENCY_BUCKETS": "0.1,fast"}, "'fast' is not a number"),
    ],
)
def test_environment_and_lists_are_checked_the_same_way(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        from_sources({}, environ)


def test_a_config_file_number_out_of_range_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "runtime.toml"
    config.write_text("grpc_max_concurrent_rpcs = 0\n")
    with pytest.raises(ValueError, match=re.escape("grpc_max_concurrent_rpcs: 0 is out of range; it must be between 1 and")):
        from_sources({}, {}, config)

"""Where a model's sessions run: its own instance_group kind first, then the server-wide provider."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from runtime.backends.onnx import cuda_available
from runtime.config import Settings
from runtime.errors import ModelLoadError
from runtime.repository.loader import session_spec
from runtime._pb import model_config_pb2 as mc

MODEL = Path("model.onnx")  # session_spec only names the file


def config_with(kind: int | None) -> mc.ModelConfig:
    config = mc.ModelConfig(name="placed")
    if kind is not None:
        config.instance_group.add(kind=kind, count=1)
    return config


@pytest.mark.parametrize("provider", ["auto", "cpu", "cuda"])
def test_kind_cpu_runs_on_cpu_whatever_the_server_wide_provider(provider: str) -> None:
    settings = replace(Settings(), execution_provider=provider)
    assert session_spec(config_with(mc.ModelInstanceGroup.KIND_CPU), MODEL, settings).device == "cpu"


def test_server_wide_cpu_applies_to_models_that_name_no_kind() -> None:
    settings = replace(Settings(), execution_provider="cpu")
    assert session_spec(config_with(None), MODEL, settings).device == "cpu"
    assert session_spec(config_with(mc.ModelInstanceGroup.KIND_AUTO), MODEL, settings).device == "cpu"


def test_kind_gpu_asks_for_cuda_whatever_the_server_wide_provider() -> None:
    settings = replace(Settings(), execution_provider="cpu")
    gpu = config_with(mc.ModelInstanceGroup.KIND_GPU)
    if cuda_available():  # onnxruntime-gpu: CUDA is required; a machine without a GPU fails at session start
        assert session_spec(gpu, MODEL, settings).device == "cuda"
    else:
        with pytest.raises(ModelLoadError, match="asks for the GPU but ONNX Runtime has no CUDAExecutionProvider"):
            session_spec(gpu, MODEL, settings)


def test_tf32_setting_reaches_the_session_spec() -> None:
    settings = replace(Settings(), execution_provider="cpu")
    assert session_spec(config_with(None), MODEL, settings).cuda_tf32 is False
    assert session_spec(config_with(None), MODEL, replace(settings, cuda_tf32=True)).cuda_tf32 is True

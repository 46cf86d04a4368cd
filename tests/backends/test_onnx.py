"""runtime/backends/onnx.py directly: sessions per instance, string inputs, errors as the core's codes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.backends.onnx import CPU, OnnxBackend, SessionSpec, default_intra_op_threads
from runtime.errors import ExecutionError, InvalidInput, ModelLoadError
from runtime.examples import build_simple, build_text, save_model
from tests.models import build_failing


def backend_for(tmp_path: Path, model: object, **spec: object) -> OnnxBackend:
    path = save_model(model, tmp_path, "m")  # type: ignore[arg-type]
    return OnnxBackend(SessionSpec(model_path=path, device="cpu", **spec))  # type: ignore[arg-type]


def test_runs_each_instance_and_returns_the_named_outputs(tmp_path: Path) -> None:
    backend = backend_for(tmp_path, build_simple(), instance_count=2)
    try:
        assert backend.instance_count == 2 and backend.providers == [CPU]
        a = np.arange(32, dtype=np.int32).reshape(2, 16)
        b = np.ones((2, 16), dtype=np.int32)
        for instance in (0, 1):
            out = backend.run(instance, {"INPUT0": a, "INPUT1": b}, ["OUTPUT1", "OUTPUT0"])
            assert list(out) == ["OUTPUT1", "OUTPUT0"]
            np.testing.assert_array_equal(out["OUTPUT0"], a + b)
            np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    finally:
        backend.close()
    assert backend.instance_count == 0


def test_string_inputs_are_decoded_from_utf8_bytes(tmp_path: Path) -> None:
    backend = backend_for(tmp_path, build_text())
    try:
        prepared = backend.prepare_input("TEXT", np.array([b"HeLLo", "\u00c4B".encode()], dtype=object))
        assert prepared.tolist() == ["HeLLo", "\u00c4B"]
        assert backend.run(0, {"TEXT": prepared}, ["LOWER"])["LOWER"].tolist() == ["hello", "\u00e4b"]
        numeric = np.ones(3, dtype=np.float32)
        assert backend.prepare_input("X", numeric) is numeric  # nothing to do for numbers
        with pytest.raises(InvalidInput, match="'TEXT': BYTES element is not valid UTF-8"):
            backend.prepare_input("TEXT", np.array([b"\xff"], dtype=object))
    finally:
        backend.close()


def test_a_failing_run_is_an_execution_error(tmp_path: Path) -> None:
    backend = backend_for(tmp_path, build_failing())
    try:
        with pytest.raises(ExecutionError, match="model execution failed"):
            backend.run(0, {"INPUT0": np.full((1, 4), 1000, dtype=np.float32)}, ["OUTPUT0"])
    finally:
        backend.close()


def test_a_file_that_is_not_onnx_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load it"):
        OnnxBackend(SessionSpec(model_path=path, device="cpu"))


def test_default_threads_share_the_cores_between_instances() -> None:
    assert default_intra_op_threads(1) >= 1
    assert default_intra_op_threads(1000) == 1


def test_only_models_whose_tensors_all_have_a_fixed_size_take_pointers(tmp_path: Path) -> None:
    text = backend_for(tmp_path / "text", build_text())
    simple = backend_for(tmp_path / "simple", build_simple(), instance_count=2)
    try:
        assert not text.binds_pointers and simple.binds_pointers
        assert simple.device_type == "cpu" and simple.device_ids == ()  # on the CPU: no CUDA device
        assert simple.memory(1).device_type == "cpu"
    finally:
        text.close()
        simple.close()

"""Small ONNX graph builders shared by the example models (and the test models in tests/models.py).

Every model is made with `onnx.helper`; weights come from `numpy.random.default_rng(seed)`, so the
same call always gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

# Opset 17 has every op used here; IR version 9 loads in onnxruntime >= 1.15.
OPSET = 17
IR_VERSION = 9
PRODUCER_NAME = "model-runtime-examples"

Shape = Sequence["int | str"]  # ints are fixed dims, strings name symbolic ones


def tensor(name: str, element_type: int, shape: Shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, element_type, list(shape))


def initializer(name: str, array: npt.NDArray[np.generic]) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name=name)


def he_normal(rng: np.random.Generator, fan_in: int, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    # He scaling keeps ReLU activations O(1) through deep stacks, so softmax outputs
    # stay finite and spread out instead of collapsing to one-hot.
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def small_bias(rng: np.random.Generator, size: int) -> npt.NDArray[np.float32]:
    return (rng.standard_normal(size) * 0.1).astype(np.float32)


def model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """Wrap a graph in a model pinned to our opset and IR version, and check it."""
    wrapped = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER_NAME,
    )
    # full_check runs shape inference too, so a wrong dim fails here, not at serving time.
    onnx.checker.check_model(wrapped, full_check=True)
    return wrapped


def require_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")

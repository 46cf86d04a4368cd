"""Test-only ONNX models (not shipped as examples): an Identity per V2 datatype and a model that fails.

Built with the same helpers as the examples (runtime/examples/graph.py), so they are just as
deterministic; the ONNX element type comes from runtime/types.py's datatype table.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from runtime.examples.graph import initializer, model, tensor
from runtime.types import DATATYPE_TO_NUMPY

# build_failing looks values up in a table this long: [0, 100) is fine, >= 100 fails.
FAILING_TABLE_SIZE = 100

# Pins the failing model to the CPU provider: CUDA's Gather does not check indices, so there the
# model would return garbage instead of raising.
FAILING_INSTANCE_GROUP = "instance_group { kind: KIND_CPU }\n"
# Triton's fixed batching window, for tests whose requests must wait in the queue for company (or to
# be cancelled, time out, be drained): the default adaptive window would run a lone request at once.
FIXED_WINDOW = 'parameters { key: "batch_window" value: { string_value: "fixed" } }\n'


def onnx_element_type(datatype: str) -> int:
    """The ONNX element type of a V2 datatype (BYTES is ONNX STRING); ValueError if there is none."""
    try:
        dtype = DATATYPE_TO_NUMPY[datatype]
    except KeyError:
        known = ", ".join(DATATYPE_TO_NUMPY)
        raise ValueError(f"unknown V2 datatype {datatype!r}; expected one of {known}") from None
    return int(helper.np_dtype_to_tensor_dtype(dtype))  # object -> STRING


def build_identity(datatype: str, batched: bool = True) -> onnx.ModelProto:
    """OUTPUT0 = Identity(INPUT0) for one V2 datatype (BYTES is ONNX STRING).

    Shape [batch, n] if batched, else [n]. onnxruntime's CPU Identity kernel handles every
    V2 datatype with an ONNX element type, so no stand-in op is needed.
    """
    element_type = onnx_element_type(datatype)
    shape: list[int | str] = ["batch", "n"] if batched else ["n"]
    graph = helper.make_graph(
        nodes=[helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
        name=f"identity_{datatype.lower()}",
        inputs=[tensor("INPUT0", element_type, shape)],
        outputs=[tensor("OUTPUT0", element_type, shape)],
    )
    return model(graph)


def build_failing() -> onnx.ModelProto:
    """A model that runs on some inputs and raises on others, for fault tests.

    INPUT0 FP32 [batch, 4] -> OUTPUT0 FP32 [batch, 4]. Each value is truncated to INT64
    and used as an index into the table (0, 1, 4, ..., 99**2) of FAILING_TABLE_SIZE squares:
    for values in [0, 100), OUTPUT0 = floor(INPUT0) ** 2. Any value >= 100 is an
    out-of-range Gather index, and onnxruntime's CPU provider raises at run time (INVALID_ARGUMENT);
    serve it with FAILING_INSTANCE_GROUP in its config.
    Values in (-101, 0) count from the table's end like Python indexing; stay in [0, 100)
    for a defined result.
    """
    squares = (np.arange(FAILING_TABLE_SIZE, dtype=np.float32)) ** 2
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Cast", ["INPUT0"], ["indices"], name="to_index", to=TensorProto.INT64),
            helper.make_node("Gather", ["squares", "indices"], ["OUTPUT0"], name="lookup", axis=0),
        ],
        name="failing",
        inputs=[tensor("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        outputs=[tensor("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        initializer=[initializer("squares", squares)],
    )
    return model(graph)

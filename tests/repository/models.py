"""Tiny models whose outputs say which version answered (y = factor * x)."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper


def build_scale(factor: float) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["INPUT0", "factor"], ["OUTPUT0"])],
        "scale",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("factor", TensorProto.FLOAT, [], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def scale_bytes(factor: float) -> bytes:
    return build_scale(factor).SerializeToString()

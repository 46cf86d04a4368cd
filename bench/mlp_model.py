"""A tiny FP32 model for benchmarks and smoke runs: INPUT [batch, 16] -> Gemm -> OUTPUT [batch, 4].

python bench/mlp_model.py /tmp/mlp.onnx [--in-features 16] [--out-features 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.14


def build_mlp(path: str | Path, in_features: int = 16, out_features: int = 4, seed: int = 0) -> Path:
    """Write a one-Gemm model with a dynamic batch dimension to `path` and return the path."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((in_features, out_features)).astype(np.float32)
    bias = rng.standard_normal(out_features).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["INPUT", "W", "B"], ["OUTPUT"])],
        "mlp",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", out_features])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", help="where to write the .onnx file")
    parser.add_argument("--in-features", type=int, default=16)
    parser.add_argument("--out-features", type=int, default=4)
    args = parser.parse_args(argv)
    print(build_mlp(args.path, args.in_features, args.out_features))


if __name__ == "__main__":
    main()

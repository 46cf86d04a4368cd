"""The ensemble tests' repository: two small ONNX models built with onnx.helper (as the examples
are, runtime/examples/graph.py) and ensembles over them, each a config.pbtxt and an empty version
directory, as in Triton.

    pre       RAW FP32 [batch, 4] -> SCALED = RAW * 0.5 + 1                      (dynamic batching)
    cls       FEATURES FP32 [batch, 4] -> SCORES = softmax(FEATURES @ W + b) [batch, 3]
    double    X FP32 [batch, 4] -> Y = 2 X; max_batch_size 2 and a 2 s window, so two requests
              run as one batch only if they are queued together
    pipeline  RAW -> pre -> cls -> SCORES (and SCALED): the two-step ensemble
    fanout    RAW -> pre -> SCALED -> double (twice, independently) -> LEFT, RIGHT
    mixed     RAW -> double -> D, with `double` called directly beside it
    guarded   X FP32 [-1, 4] (no batching of its own) -> failing (tests/models.py, max_batch_size 4)
              -> Y: a step that refuses more than 4 rows (400) and fails on values >= 100 (500)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from runtime.examples import save_model
from runtime.examples.graph import initializer, model, tensor
from tests.models import FAILING_INSTANCE_GROUP, FIXED_WINDOW, build_failing

FEATURES = 4
CLASSES = 3
WEIGHTS = np.random.default_rng(17).standard_normal((FEATURES, CLASSES)).astype(np.float32)
BIAS = np.linspace(-0.5, 0.5, CLASSES, dtype=np.float32)


def build_pre() -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Mul", ["RAW", "half"], ["halved"]),
            helper.make_node("Add", ["halved", "one"], ["SCALED"]),
        ],
        name="pre",
        inputs=[tensor("RAW", TensorProto.FLOAT, ["batch", FEATURES])],
        outputs=[tensor("SCALED", TensorProto.FLOAT, ["batch", FEATURES])],
        initializer=[initializer("half", np.float32(0.5)), initializer("one", np.float32(1.0))],
    )
    return model(graph)


def build_cls() -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gemm", ["FEATURES", "w", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["SCORES"], axis=-1),
        ],
        name="cls",
        inputs=[tensor("FEATURES", TensorProto.FLOAT, ["batch", FEATURES])],
        outputs=[tensor("SCORES", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[initializer("w", WEIGHTS), initializer("b", BIAS)],
    )
    return model(graph)


def build_double() -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes=[helper.make_node("Add", ["X", "X"], ["Y"])],
        name="double",
        inputs=[tensor("X", TensorProto.FLOAT, ["batch", FEATURES])],
        outputs=[tensor("Y", TensorProto.FLOAT, ["batch", FEATURES])],
    )
    return model(graph)


PRE_CONFIG = """\
name: "pre"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 500 }
"""
CLS_CONFIG = """\
name: "cls"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 500 }
"""
# Triton's fixed window: the tests hold a lone request in it (the adaptive window would run it at once).
DOUBLE_CONFIG = """\
name: "double"
max_batch_size: 2
dynamic_batching { max_queue_delay_microseconds: 2000000 }
""" + FIXED_WINDOW
PIPELINE_CONFIG = """\
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "SCORES" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "SCALED" data_type: TYPE_FP32 dims: [ 4 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "pre"
      model_version: -1
      input_map { key: "RAW" value: "RAW" }
      output_map { key: "SCALED" value: "SCALED" }
    },
    {
      model_name: "cls"
      model_version: -1
      input_map { key: "FEATURES" value: "SCALED" }
      output_map { key: "SCORES" value: "SCORES" }
    }
  ]
}
"""
FANOUT_CONFIG = """\
name: "fanout"
platform: "ensemble"
max_batch_size: 1
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "LEFT" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "RIGHT" data_type: TYPE_FP32 dims: [ 4 ] }
]
ensemble_scheduling {
  step [
    { model_name: "double" input_map { key: "X" value: "scaled" } output_map { key: "Y" value: "LEFT" } },
    { model_name: "double" input_map { key: "X" value: "scaled" } output_map { key: "Y" value: "RIGHT" } },
    { model_name: "pre" input_map { key: "RAW" value: "RAW" } output_map { key: "SCALED" value: "scaled" } }
  ]
}
"""
MIXED_CONFIG = """\
name: "mixed"
platform: "ensemble"
max_batch_size: 1
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "D" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling {
  step [ { model_name: "double" input_map { key: "X" value: "RAW" } output_map { key: "Y" value: "D" } } ]
}
"""
GUARDED_CONFIG = """\
name: "guarded"
platform: "ensemble"
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
ensemble_scheduling {
  step [ { model_name: "failing" input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "Y" } } ]
}
"""


def save_ensemble(root: Path, name: str, config_pbtxt: str, version: int = 1) -> Path:
    """An ensemble as Triton lays it out: config.pbtxt and an empty version directory."""
    model_dir = root / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config_pbtxt)
    return model_dir


def write_repository(root: Path) -> Path:
    save_model(build_pre(), root, "pre", config_pbtxt=PRE_CONFIG)
    save_model(build_cls(), root, "cls", config_pbtxt=CLS_CONFIG)
    save_model(build_double(), root, "double", config_pbtxt=DOUBLE_CONFIG)
    save_model(build_failing(), root, "failing", config_pbtxt="max_batch_size: 4\n" + FAILING_INSTANCE_GROUP)
    # Named to sort before the models they use: the registry still loads those first.
    save_ensemble(root, "pipeline", PIPELINE_CONFIG)
    save_ensemble(root, "fanout", FANOUT_CONFIG)
    save_ensemble(root, "mixed", MIXED_CONFIG)
    save_ensemble(root, "guarded", GUARDED_CONFIG)
    return root


# ---- the steps by hand, in numpy ----------------------------------------------------------------


def pre(raw: np.ndarray) -> np.ndarray:
    return (raw * np.float32(0.5) + np.float32(1.0)).astype(np.float32)


def cls(features: np.ndarray) -> np.ndarray:
    logits = features @ WEIGHTS + BIAS
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)

"""The example repository's config.pbtxt texts (Triton's ModelConfig in protobuf text format)
and the processing.json contents of the two processing examples."""

from __future__ import annotations

from runtime.examples.models import TABULAR_LABELS

SIMPLE_CONFIG = """\
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
"""

MLP_CONFIG = """\
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  { name: "INPUT" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ 4 ] }
]
dynamic_batching {
  max_queue_delay_microseconds: 500
}
instance_group [
  { count: 1 kind: KIND_CPU }
]
"""

# max_batch_size 0: TEXT's only dim is the string count, not a batch dim the server may split.
TEXT_CONFIG = """\
name: "text"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] }
]
output [
  { name: "LOWER" data_type: TYPE_STRING dims: [ -1 ] }
]
"""


IMAGE_CLASSIFIER_CONFIG = """\
name: "image_classifier"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  { name: "PIXELS" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] }
]
output [
  { name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] }
]
dynamic_batching {
  max_queue_delay_microseconds: 1000
}
"""

# Clients send encoded JPEG/PNG (or its base64 text, for curl) as IMAGE [batch, 1]; the server decodes,
# resizes the shorter side to 36, centre-crops 32x32, normalises with CIFAR-10's mean/std into PIXELS.
IMAGE_CLASSIFIER_PROCESSING: dict[str, object] = {
    "preprocess": [
        {
            "type": "image",
            "input": "IMAGE",
            "model_input": "PIXELS",
            "format": "encoded",
            "base64": True,
            "resize": {"shorter_side": 36},
            "scale": 1.0 / 255.0,
            "mean": [0.4914, 0.4822, 0.4465],
            "std": [0.247, 0.243, 0.261],
        }
    ],
    "postprocess": [
        {"type": "softmax", "input": "LOGITS", "output": "PROBABILITIES"},
        {
            "type": "topk",
            "input": "PROBABILITIES",
            "k": 3,
            "labels": "labels.txt",
            "outputs": {"labels": "LABELS", "scores": "SCORES"},
        },
    ],
    "outputs": ["PROBABILITIES", "LABELS", "SCORES"],
}

TABULAR_CLASSIFIER_CONFIG = """\
name: "tabular_classifier"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  { name: "FEATURES" data_type: TYPE_FP32 dims: [ 12 ] }
]
output [
  { name: "PROBABILITY" data_type: TYPE_FP32 dims: [ 1 ] }
]
dynamic_batching {
  max_queue_delay_microseconds: 500
}
"""

TABULAR_CLASSIFIER_PROCESSING: dict[str, object] = {
    "preprocess": [
        {
            "type": "numeric",
            "input": "NUMERIC",
            "model_input": "FEATURES",
            "columns": [
                {"name": "age", "fill": 45.0, "clip": [18, 100], "standardize": {"mean": 45.0, "std": 15.0}},
                {"name": "income", "missing": "error", "clip": [0, None], "minmax": {"min": 0.0, "max": 200000.0}},
                {"name": "tenure_months", "fill": 0.0, "standardize": {"mean": 24.0, "std": 18.0}},
                {"name": "monthly_charges", "missing": "error", "standardize": {"mean": 60.0, "std": 30.0}},
            ],
        },
        {
            "type": "categorical",
            "input": "CATEGORIES",
            "model_input": "FEATURES",
            "vocabulary": "vocabulary.json",
            "columns": ["country", "plan"],
            "encoding": "onehot",
            "unknown": "error",
        },
    ],
    "postprocess": [
        {
            "type": "threshold",
            "input": "PROBABILITY",
            "threshold": 0.5,
            "labels": list(TABULAR_LABELS),
            "outputs": {"label": "LABEL", "index": "CLASS_ID"},
        }
    ],
    "outputs": ["PROBABILITY", "LABEL", "CLASS_ID"],
}

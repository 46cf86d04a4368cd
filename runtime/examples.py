"""Example ONNX models, built in code, and a Triton-layout model repository holding them.

Every model is made with `onnx.helper`; weights come from `numpy.random.default_rng(seed)`,
so the same call always gives the same bytes and nothing is downloaded. Tests, benchmarks
and the quick-start use these models; `write_example_repository` lays them out as

    root/<model>/config.pbtxt        (absent for image_cnn: the server auto-completes it)
    root/<model>/1/model.onnx
    root/<model>/1/processing.json   (image_classifier, tabular_classifier: see the README's
                                      "Pre- and post-processing"; with labels.txt / vocabulary.json)
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 has every op used here; IR version 9 loads in onnxruntime >= 1.15.
OPSET = 17
IR_VERSION = 9
PRODUCER_NAME = "model-runtime-examples"

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"

EXAMPLE_MODELS: tuple[str, ...] = ("simple", "mlp", "image_cnn", "text", "image_classifier", "tabular_classifier")

# V2 datatype name -> ONNX element type. BYTES is ONNX STRING.
_ONNX_ELEMENT_TYPE: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}

# build_failing looks values up in a table this long: [0, 100) is fine, >= 100 fails.
FAILING_TABLE_SIZE = 100

# The StringNormalizer kernel builds a C++ std::locale from this name at session start and
# fails if the host lacks it. ONNX's default, en_US.UTF-8, is missing from slim containers;
# C.UTF-8 ships with glibc (built in since 2.35, patched in by Debian/Ubuntu/RHEL for years)
# and still lowercases non-ASCII letters, which plain "C" would not.
TEXT_LOCALE = "C.UTF-8"

Shape = Sequence["int | str"]  # ints are fixed dims, strings name symbolic ones


# ---------------------------------------------------------------------------------------
# Small builders shared by the models


def _tensor(name: str, element_type: int, shape: Shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, element_type, list(shape))


def _initializer(name: str, array: npt.NDArray[np.generic]) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name=name)


def _he_normal(rng: np.random.Generator, fan_in: int, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    # He scaling keeps ReLU activations O(1) through deep stacks, so softmax outputs
    # stay finite and spread out instead of collapsing to one-hot.
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def _small_bias(rng: np.random.Generator, size: int) -> npt.NDArray[np.float32]:
    return (rng.standard_normal(size) * 0.1).astype(np.float32)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """Wrap a graph in a model pinned to our opset and IR version, and check it."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER_NAME,
    )
    # full_check runs shape inference too, so a wrong dim fails here, not at serving time.
    onnx.checker.check_model(model, full_check=True)
    return model


def _require_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


# ---------------------------------------------------------------------------------------
# The models


def build_simple() -> onnx.ModelProto:
    """Triton's classic `simple`: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.

    All four tensors are INT32 [batch, 16]; overflow wraps as in two's complement.
    """
    shape: list[int | str] = ["batch", 16]
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
        ],
        name="simple",
        inputs=[_tensor("INPUT0", TensorProto.INT32, shape), _tensor("INPUT1", TensorProto.INT32, shape)],
        outputs=[_tensor("OUTPUT0", TensorProto.INT32, shape), _tensor("OUTPUT1", TensorProto.INT32, shape)],
    )
    return _model(graph)


def _dense_classifier(name: str, widths: Sequence[int], seed: int) -> onnx.ModelProto:
    """INPUT [batch, widths[0]] -> (Gemm+Relu)* -> Gemm -> Softmax -> PROBABILITIES.

    Layer i has initializers `fc{i}.weight` [in, out] and `fc{i}.bias` [out], so
    y = x @ weight + bias; every layer but the last is followed by Relu.
    """
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = "INPUT"
    layer_count = len(widths) - 1
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths), start=1):
        weight, bias, dense = f"fc{index}.weight", f"fc{index}.bias", f"fc{index}"
        initializers.append(_initializer(weight, _he_normal(rng, fan_in, (fan_in, fan_out))))
        initializers.append(_initializer(bias, _small_bias(rng, fan_out)))
        nodes.append(helper.make_node("Gemm", [current, weight, bias], [dense], name=dense))
        current = dense
        if index < layer_count:
            nodes.append(helper.make_node("Relu", [dense], [f"relu{index}"], name=f"relu{index}"))
            current = f"relu{index}"
    nodes.append(helper.make_node("Softmax", [current], ["PROBABILITIES"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes,
        name,
        inputs=[_tensor("INPUT", TensorProto.FLOAT, ["batch", widths[0]])],
        outputs=[_tensor("PROBABILITIES", TensorProto.FLOAT, ["batch", widths[-1]])],
        initializer=initializers,
    )
    return _model(graph)


def build_mlp(input_size: int = 16, hidden: int = 32, classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    """FP32 classifier: INPUT [batch, input_size] -> Gemm+Relu -> Gemm -> Softmax -> PROBABILITIES.

    Weights are initializers fc1.weight [input_size, hidden], fc1.bias, fc2.weight
    [hidden, classes], fc2.bias; each Gemm computes x @ weight + bias.
    """
    _require_positive(input_size=input_size, hidden=hidden, classes=classes)
    return _dense_classifier("mlp", [input_size, hidden, classes], seed)


def build_wide_mlp(
    input_size: int = 512, hidden: int = 2048, layers: int = 3, classes: int = 16, seed: int = 1
) -> onnx.ModelProto:
    """The benchmark model: `layers` Gemm+Relu layers of width `hidden`, then Gemm -> Softmax.

    Input INPUT FP32 [batch, input_size], output PROBABILITIES [batch, classes]. Big enough
    (about 36 MiB of weights by default) that batch-1 inference is bound by reading the
    weights, so batching many rows into one call is much cheaper per row.
    """
    _require_positive(input_size=input_size, hidden=hidden, layers=layers, classes=classes)
    return _dense_classifier("wide_mlp", [input_size, *([hidden] * layers), classes], seed)


def build_image_cnn(height: int = 32, width: int = 32, classes: int = 10, seed: int = 2) -> onnx.ModelProto:
    """UINT8 HWC images IMAGE [batch, height, width, 3] -> PROBABILITIES [batch, classes].

    Cast to float, scale by 1/255, Transpose to NCHW, Conv 3->8 (3x3, pad 1) + Relu,
    GlobalAveragePool, Flatten, Gemm (x @ fc.weight + fc.bias), Softmax. Initializers:
    scale [], conv.weight [8, 3, 3, 3], conv.bias [8], fc.weight [8, classes], fc.bias.
    """
    _require_positive(height=height, width=width, classes=classes)
    channels_in, channels_out, kernel = 3, 8, 3
    rng = np.random.default_rng(seed)
    initializers = [
        _initializer("scale", np.array(1.0 / 255.0, dtype=np.float32)),
        _initializer(
            "conv.weight",
            _he_normal(rng, channels_in * kernel * kernel, (channels_out, channels_in, kernel, kernel)),
        ),
        _initializer("conv.bias", _small_bias(rng, channels_out)),
        _initializer("fc.weight", _he_normal(rng, channels_out, (channels_out, classes))),
        _initializer("fc.bias", _small_bias(rng, classes)),
    ]
    nodes = [
        helper.make_node("Cast", ["IMAGE"], ["image_float"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["image_float", "scale"], ["image_unit"], name="scale"),
        helper.make_node("Transpose", ["image_unit"], ["image_nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv",
            ["image_nchw", "conv.weight", "conv.bias"],
            ["conv"],
            name="conv",
            kernel_shape=[kernel, kernel],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv"], ["conv_relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["conv_relu"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["PROBABILITIES"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "image_cnn",
        inputs=[_tensor("IMAGE", TensorProto.UINT8, ["batch", height, width, channels_in])],
        outputs=[_tensor("PROBABILITIES", TensorProto.FLOAT, ["batch", classes])],
        initializer=initializers,
    )
    return _model(graph)


def build_text() -> onnx.ModelProto:
    """BYTES in, BYTES out: TEXT [n] (ONNX string, 1-D, no batch dim) -> lowercase LOWER [n].

    Uses ai.onnx StringNormalizer with locale TEXT_LOCALE (see there why not the default).
    onnxruntime's kernel refuses an empty input (n = 0) with INVALID_ARGUMENT. Feed it
    `str` objects: onnxruntime's Python binding turns a `bytes` element into its repr
    ("b'...'") rather than decoding it, so callers must decode UTF-8 first.
    """
    graph = helper.make_graph(
        nodes=[
            helper.make_node(
                "StringNormalizer",
                ["TEXT"],
                ["LOWER"],
                name="lower",
                case_change_action="LOWER",
                locale=TEXT_LOCALE,
            )
        ],
        name="text",
        inputs=[_tensor("TEXT", TensorProto.STRING, ["n"])],
        outputs=[_tensor("LOWER", TensorProto.STRING, ["n"])],
    )
    return _model(graph)


def build_identity(datatype: str, batched: bool = True) -> onnx.ModelProto:
    """OUTPUT0 = Identity(INPUT0) for one V2 datatype (BYTES is ONNX STRING).

    Shape [batch, n] if batched, else [n]. onnxruntime's CPU Identity kernel handles every
    datatype in _ONNX_ELEMENT_TYPE, so no stand-in op is needed.
    """
    try:
        element_type = _ONNX_ELEMENT_TYPE[datatype]
    except KeyError:
        known = ", ".join(_ONNX_ELEMENT_TYPE)
        raise ValueError(f"unknown V2 datatype {datatype!r}; expected one of {known}") from None
    shape: list[int | str] = ["batch", "n"] if batched else ["n"]
    graph = helper.make_graph(
        nodes=[helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"], name="identity")],
        name=f"identity_{datatype.lower()}",
        inputs=[_tensor("INPUT0", element_type, shape)],
        outputs=[_tensor("OUTPUT0", element_type, shape)],
    )
    return _model(graph)


# Pins the failing model to the CPU provider: CUDA's Gather does not check indices, so there the
# model would return garbage instead of raising.
FAILING_INSTANCE_GROUP = "instance_group { kind: KIND_CPU }\n"


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
        inputs=[_tensor("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        outputs=[_tensor("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        initializer=[_initializer("squares", squares)],
    )
    return _model(graph)


IMAGE_CLASSIFIER_LABELS: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def build_image_classifier(size: int = 32, classes: int = 10, seed: int = 6) -> onnx.ModelProto:
    """FP32 CHW images PIXELS [batch, 3, size, size] -> LOGITS [batch, classes], for pre-processing.

    Conv 3->16 (3x3, pad 1) + Relu, Conv 16->16 (3x3, stride 2, pad 1) + Relu, GlobalAveragePool,
    Flatten, Gemm (x @ fc.weight + fc.bias). Initializers conv1.weight [16, 3, 3, 3], conv1.bias,
    conv2.weight [16, 16, 3, 3], conv2.bias, fc.weight [16, classes], fc.bias. The served model adds
    image decoding and normalisation in front and softmax + top-k labels behind (its processing.json).
    """
    _require_positive(size=size, classes=classes)
    rng = np.random.default_rng(seed)
    width = 16
    initializers = [
        _initializer("conv1.weight", _he_normal(rng, 3 * 9, (width, 3, 3, 3))),
        _initializer("conv1.bias", _small_bias(rng, width)),
        _initializer("conv2.weight", _he_normal(rng, width * 9, (width, width, 3, 3))),
        _initializer("conv2.bias", _small_bias(rng, width)),
        _initializer("fc.weight", _he_normal(rng, width, (width, classes))),
        _initializer("fc.bias", _small_bias(rng, classes)),
    ]
    nodes = [
        helper.make_node("Conv", ["PIXELS", "conv1.weight", "conv1.bias"], ["conv1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", "conv2.weight", "conv2.bias"], ["conv2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["relu2"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1),
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["LOGITS"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "image_classifier",
        inputs=[_tensor("PIXELS", TensorProto.FLOAT, ["batch", 3, size, size])],
        outputs=[_tensor("LOGITS", TensorProto.FLOAT, ["batch", classes])],
        initializer=initializers,
    )
    return _model(graph)


# The tabular example's columns: NUMERIC [batch, 4] and CATEGORIES [batch, 2] (one-hot in FEATURES).
TABULAR_NUMERIC_COLUMNS: tuple[str, ...] = ("age", "income", "tenure_months", "monthly_charges")
TABULAR_VOCABULARY: dict[str, list[str]] = {
    "country": ["de", "fr", "gb", "jp", "us"],
    "plan": ["free", "pro", "team"],
}
TABULAR_LABELS: tuple[str, str] = ("stays", "churns")


def tabular_feature_count() -> int:
    return len(TABULAR_NUMERIC_COLUMNS) + sum(len(words) for words in TABULAR_VOCABULARY.values())


def build_tabular_classifier(hidden: int = 16, seed: int = 8) -> onnx.ModelProto:
    """Binary classifier FEATURES FP32 [batch, 12] -> PROBABILITY FP32 [batch, 1] (Sigmoid).

    FEATURES = 4 scaled numeric columns, then one-hot country (5) and plan (3), as the served
    model's processing.json builds them. Gemm+Relu to `hidden`, Gemm to 1, Sigmoid; initializers
    fc1.weight [12, hidden], fc1.bias, fc2.weight [hidden, 1], fc2.bias.
    """
    _require_positive(hidden=hidden)
    features = tabular_feature_count()
    rng = np.random.default_rng(seed)
    initializers = [
        _initializer("fc1.weight", _he_normal(rng, features, (features, hidden))),
        _initializer("fc1.bias", _small_bias(rng, hidden)),
        _initializer("fc2.weight", _he_normal(rng, hidden, (hidden, 1))),
        _initializer("fc2.bias", _small_bias(rng, 1)),
    ]
    nodes = [
        helper.make_node("Gemm", ["FEATURES", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1"),
        helper.make_node("Relu", ["fc1"], ["relu1"], name="relu1"),
        helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], ["logit"], name="fc2"),
        helper.make_node("Sigmoid", ["logit"], ["PROBABILITY"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "tabular_classifier",
        inputs=[_tensor("FEATURES", TensorProto.FLOAT, ["batch", features])],
        outputs=[_tensor("PROBABILITY", TensorProto.FLOAT, ["batch", 1])],
        initializer=initializers,
    )
    return _model(graph)


# ---------------------------------------------------------------------------------------
# config.pbtxt texts (Triton's ModelConfig in protobuf text format)

_SIMPLE_CONFIG = """\
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

_MLP_CONFIG = """\
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
_TEXT_CONFIG = """\
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


_IMAGE_CLASSIFIER_CONFIG = """\
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

_TABULAR_CLASSIFIER_CONFIG = """\
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


# ---------------------------------------------------------------------------------------
# Writing a repository


def _write_atomically(path: Path, data: bytes) -> None:
    # A server polling the repository must never read a half-written file: write a
    # hidden temporary file beside the target, then rename it over the target.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _check_model_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"model name {name!r} must be a single, plain directory name")


def save_model(
    model: onnx.ModelProto, repo: Path, name: str, version: int = 1, config_pbtxt: str | None = None
) -> Path:
    """Write repo/name/version/model.onnx (and repo/name/config.pbtxt if given); return the model file.

    Overwrites what is there. With config_pbtxt None an existing config.pbtxt is left
    alone, so adding a version to a configured model keeps its config.
    """
    _check_model_name(name)
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    model_dir = Path(repo) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    model_path = version_dir / MODEL_FILENAME
    _write_atomically(model_path, model.SerializeToString())
    if config_pbtxt is not None:
        _write_atomically(model_dir / CONFIG_FILENAME, config_pbtxt.encode())
    return model_path


def write_example_repository(root: Path) -> Path:
    """Write every model in EXAMPLE_MODELS under root, Triton layout; return root.

    Idempotent: files are overwritten with identical bytes. image_cnn gets no config.pbtxt
    (a stale one is removed) so that the server must auto-complete it from the ONNX file.
    Other files under root are left alone.
    """
    root = Path(root)
    save_model(build_simple(), root, "simple", config_pbtxt=_SIMPLE_CONFIG)
    save_model(build_mlp(), root, "mlp", config_pbtxt=_MLP_CONFIG)
    save_model(build_image_cnn(), root, "image_cnn")
    (root / "image_cnn" / CONFIG_FILENAME).unlink(missing_ok=True)
    save_model(build_text(), root, "text", config_pbtxt=_TEXT_CONFIG)
    save_model(build_image_classifier(), root, "image_classifier", config_pbtxt=_IMAGE_CLASSIFIER_CONFIG)
    _write_files(
        root / "image_classifier" / "1",
        {
            "processing.json": _json_text(IMAGE_CLASSIFIER_PROCESSING),
            "labels.txt": "".join(f"{label}\n" for label in IMAGE_CLASSIFIER_LABELS),
        },
    )
    save_model(build_tabular_classifier(), root, "tabular_classifier", config_pbtxt=_TABULAR_CLASSIFIER_CONFIG)
    _write_files(
        root / "tabular_classifier" / "1",
        {
            "processing.json": _json_text(TABULAR_CLASSIFIER_PROCESSING),
            "vocabulary.json": _json_text(TABULAR_VOCABULARY),
        },
    )
    return root


def _json_text(value: object) -> str:
    return json.dumps(value, indent=2) + "\n"


def _write_files(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        _write_atomically(directory / name, text.encode("utf-8"))

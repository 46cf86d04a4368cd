"""The example models, built in code: the shipped examples and the benchmark's `wide_mlp`.

Weights come from `numpy.random.default_rng(seed)`, so the same call always gives the same bytes
and nothing is downloaded. runtime/examples/repository.py lays them out as a model repository.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from runtime.examples.graph import he_normal, initializer, model, require_positive, small_bias, tensor

# The StringNormalizer kernel builds a C++ std::locale from this name at session start and
# fails if the host lacks it. ONNX's default, en_US.UTF-8, is missing from slim containers;
# C.UTF-8 ships with glibc (built in since 2.35, patched in by Debian/Ubuntu/RHEL for years)
# and still lowercases non-ASCII letters, which plain "C" would not.
TEXT_LOCALE = "C.UTF-8"


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
        inputs=[tensor("INPUT0", TensorProto.INT32, shape), tensor("INPUT1", TensorProto.INT32, shape)],
        outputs=[tensor("OUTPUT0", TensorProto.INT32, shape), tensor("OUTPUT1", TensorProto.INT32, shape)],
    )
    return model(graph)


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
        initializers.append(initializer(weight, he_normal(rng, fan_in, (fan_in, fan_out))))
        initializers.append(initializer(bias, small_bias(rng, fan_out)))
        nodes.append(helper.make_node("Gemm", [current, weight, bias], [dense], name=dense))
        current = dense
        if index < layer_count:
            nodes.append(helper.make_node("Relu", [dense], [f"relu{index}"], name=f"relu{index}"))
            current = f"relu{index}"
    nodes.append(helper.make_node("Softmax", [current], ["PROBABILITIES"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes,
        name,
        inputs=[tensor("INPUT", TensorProto.FLOAT, ["batch", widths[0]])],
        outputs=[tensor("PROBABILITIES", TensorProto.FLOAT, ["batch", widths[-1]])],
        initializer=initializers,
    )
    return model(graph)


def build_mlp(input_size: int = 16, hidden: int = 32, classes: int = 4, seed: int = 0) -> onnx.ModelProto:
    """FP32 classifier: INPUT [batch, input_size] -> Gemm+Relu -> Gemm -> Softmax -> PROBABILITIES.

    Weights are initializers fc1.weight [input_size, hidden], fc1.bias, fc2.weight
    [hidden, classes], fc2.bias; each Gemm computes x @ weight + bias.
    """
    require_positive(input_size=input_size, hidden=hidden, classes=classes)
    return _dense_classifier("mlp", [input_size, hidden, classes], seed)


def build_wide_mlp(
    input_size: int = 512, hidden: int = 2048, layers: int = 3, classes: int = 16, seed: int = 1
) -> onnx.ModelProto:
    """The benchmark model: `layers` Gemm+Relu layers of width `hidden`, then Gemm -> Softmax.

    Input INPUT FP32 [batch, input_size], output PROBABILITIES [batch, classes]. Big enough
    (about 36 MiB of weights by default) that batch-1 inference is bound by reading the
    weights, so batching many rows into one call is much cheaper per row.
    """
    require_positive(input_size=input_size, hidden=hidden, layers=layers, classes=classes)
    return _dense_classifier("wide_mlp", [input_size, *([hidden] * layers), classes], seed)


def build_image_cnn(height: int = 32, width: int = 32, classes: int = 10, seed: int = 2) -> onnx.ModelProto:
    """UINT8 HWC images IMAGE [batch, height, width, 3] -> PROBABILITIES [batch, classes].

    Cast to float, scale by 1/255, Transpose to NCHW, Conv 3->8 (3x3, pad 1) + Relu,
    GlobalAveragePool, Flatten, Gemm (x @ fc.weight + fc.bias), Softmax. Initializers:
    scale [], conv.weight [8, 3, 3, 3], conv.bias [8], fc.weight [8, classes], fc.bias.
    """
    require_positive(height=height, width=width, classes=classes)
    channels_in, channels_out, kernel = 3, 8, 3
    rng = np.random.default_rng(seed)
    initializers = [
        initializer("scale", np.array(1.0 / 255.0, dtype=np.float32)),
        initializer(
            "conv.weight",
            he_normal(rng, channels_in * kernel * kernel, (channels_out, channels_in, kernel, kernel)),
        ),
        initializer("conv.bias", small_bias(rng, channels_out)),
        initializer("fc.weight", he_normal(rng, channels_out, (channels_out, classes))),
        initializer("fc.bias", small_bias(rng, classes)),
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
        inputs=[tensor("IMAGE", TensorProto.UINT8, ["batch", height, width, channels_in])],
        outputs=[tensor("PROBABILITIES", TensorProto.FLOAT, ["batch", classes])],
        initializer=initializers,
    )
    return model(graph)


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
        inputs=[tensor("TEXT", TensorProto.STRING, ["n"])],
        outputs=[tensor("LOWER", TensorProto.STRING, ["n"])],
    )
    return model(graph)


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
    require_positive(size=size, classes=classes)
    rng = np.random.default_rng(seed)
    width = 16
    initializers = [
        initializer("conv1.weight", he_normal(rng, 3 * 9, (width, 3, 3, 3))),
        initializer("conv1.bias", small_bias(rng, width)),
        initializer("conv2.weight", he_normal(rng, width * 9, (width, width, 3, 3))),
        initializer("conv2.bias", small_bias(rng, width)),
        initializer("fc.weight", he_normal(rng, width, (width, classes))),
        initializer("fc.bias", small_bias(rng, classes)),
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
        inputs=[tensor("PIXELS", TensorProto.FLOAT, ["batch", 3, size, size])],
        outputs=[tensor("LOGITS", TensorProto.FLOAT, ["batch", classes])],
        initializer=initializers,
    )
    return model(graph)


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
    require_positive(hidden=hidden)
    features = tabular_feature_count()
    rng = np.random.default_rng(seed)
    initializers = [
        initializer("fc1.weight", he_normal(rng, features, (features, hidden))),
        initializer("fc1.bias", small_bias(rng, hidden)),
        initializer("fc2.weight", he_normal(rng, hidden, (hidden, 1))),
        initializer("fc2.bias", small_bias(rng, 1)),
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
        inputs=[tensor("FEATURES", TensorProto.FLOAT, ["batch", features])],
        outputs=[tensor("PROBABILITY", TensorProto.FLOAT, ["batch", 1])],
        initializer=initializers,
    )
    return model(graph)

"""The example models compute what their docstrings say, and the repository is laid out as Triton's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message
from onnx import numpy_helper

from runtime import examples
from runtime.examples import (
    EXAMPLE_MODELS,
    build_image_cnn,
    build_mlp,
    build_text,
    build_wide_mlp,
    save_model,
    write_example_repository,
)
from runtime.types import DATATYPE_TO_NUMPY
from tests.models import FAILING_TABLE_SIZE, build_failing, build_identity

Array = npt.NDArray[Any]
PROTOS = Path(__file__).resolve().parents[1] / "protos"
CONFIGURED_MODELS = ("simple", "mlp", "text", "image_classifier", "tabular_classifier")
# Files beside model.onnx in version 1 (the processing examples; see tests/processing for what they do).
VERSION_FILES = {
    "image_classifier": ("processing.json", "labels.txt"),
    "tabular_classifier": ("processing.json", "vocabulary.json"),
}

NUMPY_DTYPE: dict[str, Any] = {name: dtype.type for name, dtype in DATATYPE_TO_NUMPY.items()}


# ---------------------------------------------------------------------------------------
# Helpers


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    data = model.read_bytes() if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run_one(sess: ort.InferenceSession, **inputs: Array) -> list[Array]:
    return list(sess.run(None, inputs))


def initializers(model: onnx.ModelProto | Path) -> dict[str, Array]:
    if isinstance(model, Path):
        model = onnx.load(str(model))
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def softmax(logits: Array) -> Array:
    shifted: Array = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities: Array = shifted / shifted.sum(axis=-1, keepdims=True)
    return probabilities


def dense_classifier_reference(weights: dict[str, Array], x: Array, layer_count: int) -> Array:
    """x @ fc{i}.weight + fc{i}.bias, Relu between layers, Softmax at the end; in float64."""
    activations = x.astype(np.float64)
    for layer in range(1, layer_count + 1):
        activations = activations @ weights[f"fc{layer}.weight"] + weights[f"fc{layer}.bias"]
        if layer < layer_count:
            activations = np.maximum(activations, 0.0)
    return softmax(activations)


def image_cnn_reference(weights: dict[str, Array], images: Array) -> Array:
    """The image_cnn graph, recomputed with numpy: conv as a sum over 3x3 windows."""
    unit = images.astype(np.float32) * weights["scale"]
    nchw = unit.transpose(0, 3, 1, 2).astype(np.float64)
    padded = np.pad(nchw, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # n c h w i j
    conv = np.einsum("nchwij,ocij->nohw", windows, weights["conv.weight"])
    conv += weights["conv.bias"][None, :, None, None]
    features = np.maximum(conv, 0.0).mean(axis=(2, 3))
    return softmax(features @ weights["fc.weight"] + weights["fc.bias"])


def edge_values(datatype: str) -> list[Any]:
    """Values that a lossy conversion anywhere would change: extremes, NaN, -0.0, NUL bytes."""
    if datatype == "BOOL":
        return [True, False, True, True, False, False]
    if datatype == "BYTES":
        # str, not bytes: onnxruntime's binding stores str(bytes_obj), i.e. "b'...'".
        return ["", "plain", "é\x00x", "日本語", " spaced ", "\U0001f600"]
    dtype = np.dtype(NUMPY_DTYPE[datatype])
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return [info.min, info.max, np.nan, -np.inf, -0.0, info.smallest_subnormal]
    info_int = np.iinfo(dtype)
    return [info_int.min, info_int.max, 0, 1, info_int.max - 1, info_int.min + 1]


def model_config_class(descriptor_set: Path) -> type[Message]:
    """ModelConfig from protos/model_config.proto, in a private pool.

    A private pool keeps this test from clashing with any *_pb2 module (ours or
    tritonclient's) that registers the same proto file in the default pool.
    """
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    config_class: type[Message] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("inference.ModelConfig")
    )
    return config_class


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def model_config_type(tmp_path_factory: pytest.TempPathFactory) -> type[Message]:
    protoc = pytest.importorskip("grpc_tools.protoc")
    descriptor_set = tmp_path_factory.mktemp("protos") / "model_config.desc"
    arguments = ["protoc", f"-I{PROTOS}", f"--descriptor_set_out={descriptor_set}", "model_config.proto"]
    status = protoc.main(arguments)
    assert status == 0, "protoc could not compile protos/model_config.proto"
    return model_config_class(descriptor_set)


# ---------------------------------------------------------------------------------------
# Repository layout and config.pbtxt


def test_repository_holds_exactly_the_example_models(repository: Path) -> None:
    files = sorted(str(path.relative_to(repository)) for path in repository.rglob("*") if path.is_file())
    expected = sorted(
        [f"{name}/1/model.onnx" for name in EXAMPLE_MODELS]
        + [f"{name}/config.pbtxt" for name in CONFIGURED_MODELS]
        + [f"{name}/1/{file}" for name, files in VERSION_FILES.items() for file in files]
    )
    assert files == expected
    assert EXAMPLE_MODELS == ("simple", "mlp", "image_cnn", "text", "image_classifier", "tabular_classifier")


@pytest.mark.parametrize("name", EXAMPLE_MODELS)
def test_every_example_loads_and_fits_onnxruntime_1_20(repository: Path, name: str) -> None:
    model = onnx.load(str(repository / name / "1" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10  # the newest IR version onnxruntime 1.20 reads
    assert [(opset.domain, opset.version) for opset in model.opset_import] == [("", 17)]
    session(repository / name / "1" / "model.onnx")


def graph_signature(model: onnx.ModelProto, max_batch_size: int) -> dict[str, tuple[int, list[int]]]:
    """name -> (ONNX element type, dims as config.pbtxt would write them) for inputs and outputs."""
    signature = {}
    for value in [*model.graph.input, *model.graph.output]:
        tensor_type = value.type.tensor_type
        dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
        signature[value.name] = (tensor_type.elem_type, dims[1:] if max_batch_size > 0 else dims)
    return signature


CONFIG_TYPE_TO_ONNX = {
    "TYPE_INT32": onnx.TensorProto.INT32,
    "TYPE_FP32": onnx.TensorProto.FLOAT,
    "TYPE_STRING": onnx.TensorProto.STRING,
}


@pytest.mark.parametrize("name", CONFIGURED_MODELS)
def test_config_parses_and_matches_the_graph(
    repository: Path, model_config_type: type[Message], name: str
) -> None:
    config: Any = text_format.Parse((repository / name / "config.pbtxt").read_text(), model_config_type())
    model = onnx.load(str(repository / name / "1" / "model.onnx"))
    assert config.name == name
    assert config.platform == "onnxruntime_onnx"
    data_types = model_config_type.DESCRIPTOR.file.pool.FindEnumTypeByName("inference.DataType")
    declared = {}
    for tensor in [*config.input, *config.output]:
        onnx_type = CONFIG_TYPE_TO_ONNX[data_types.values_by_number[tensor.data_type].name]
        declared[tensor.name] = (onnx_type, list(tensor.dims))
    assert declared == graph_signature(model, config.max_batch_size)


def test_configs_say_what_the_spec_asks(repository: Path, model_config_type: type[Message]) -> None:
    def read(name: str) -> Any:
        return text_format.Parse((repository / name / "config.pbtxt").read_text(), model_config_type())

    assert read("simple").max_batch_size == 8
    mlp = read("mlp")
    assert mlp.max_batch_size == 32
    assert mlp.dynamic_batching.max_queue_delay_microseconds == 500
    assert read("text").max_batch_size == 0


# ---------------------------------------------------------------------------------------
# What each model computes


def test_simple_adds_and_subtracts_exactly(repository: Path) -> None:
    rng = np.random.default_rng(10)
    left = rng.integers(-(2**30), 2**30, size=(3, 16), dtype=np.int32)
    right = rng.integers(-(2**30), 2**30, size=(3, 16), dtype=np.int32)
    total, difference = run_one(
        session(repository / "simple" / "1" / "model.onnx"), INPUT0=left, INPUT1=right
    )
    assert total.dtype == np.int32 and difference.dtype == np.int32
    np.testing.assert_array_equal(total, left + right)
    np.testing.assert_array_equal(difference, left - right)


def test_mlp_matches_numpy_recomputed_from_its_initializers(repository: Path) -> None:
    path = repository / "mlp" / "1" / "model.onnx"
    x = np.random.default_rng(11).standard_normal((5, 16)).astype(np.float32)
    (probabilities,) = run_one(session(path), INPUT=x)
    assert probabilities.shape == (5, 4) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, dense_classifier_reference(initializers(path), x, 2), rtol=1e-5)


def test_mlp_is_not_degenerate(repository: Path) -> None:
    # Weights that made every row the same, or one-hot, would let a batching bug hide.
    x = np.random.default_rng(12).standard_normal((8, 16)).astype(np.float32)
    (probabilities,) = run_one(session(repository / "mlp" / "1" / "model.onnx"), INPUT=x)
    assert len({tuple(row) for row in probabilities.round(4)}) == 8
    assert probabilities.max() < 0.999


def test_image_cnn_outputs_a_distribution_per_image(repository: Path) -> None:
    path = repository / "image_cnn" / "1" / "model.onnx"
    images = np.random.default_rng(13).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    (probabilities,) = run_one(session(path), IMAGE=images)
    assert probabilities.shape == (3, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        probabilities, image_cnn_reference(initializers(path), images), rtol=1e-4, atol=1e-6
    )


def test_text_lowercases_each_string(repository: Path) -> None:
    text = session(repository / "text" / "1" / "model.onnx")
    (lower,) = run_one(text, TEXT=np.array(["Hello", "WORLD"], dtype=object))
    assert lower.tolist() == ["hello", "world"]
    # Non-ASCII needs a UTF-8 locale; plain "C" would leave these unchanged.
    (lower,) = run_one(text, TEXT=np.array(["ÄÖÜ Straße", "ÉCOLE"], dtype=object))
    assert lower.tolist() == ["äöü straße", "école"]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("datatype", list(NUMPY_DTYPE))
def test_identity_round_trips_every_datatype_exactly(datatype: str, batched: bool) -> None:
    values: Array = np.array(edge_values(datatype), dtype=NUMPY_DTYPE[datatype])
    sent = values.reshape(2, 3) if batched else values
    (received,) = run_one(session(build_identity(datatype, batched)), INPUT0=sent)
    assert received.dtype == sent.dtype
    assert received.shape == sent.shape
    if datatype == "BYTES":
        assert received.tolist() == sent.tolist()
    else:
        assert received.tobytes() == sent.tobytes()  # bit for bit: NaN, -0.0 and subnormals too


def test_identity_declares_batch_and_symbolic_dims() -> None:
    def dims(model: onnx.ModelProto) -> list[str]:
        return [dim.dim_param for dim in model.graph.input[0].type.tensor_type.shape.dim]

    assert dims(build_identity("FP32")) == ["batch", "n"]
    assert dims(build_identity("FP32", batched=False)) == ["n"]


def test_identity_rejects_unknown_datatypes() -> None:
    with pytest.raises(ValueError, match="BF16"):
        build_identity("BF16")


def test_failing_model_computes_squares_of_the_floor_on_good_input() -> None:
    x = np.random.default_rng(14).uniform(0, FAILING_TABLE_SIZE, size=(6, 4)).astype(np.float32)
    x[0] = [0.0, 1.0, 2.5, 3.0]
    (out,) = run_one(session(build_failing()), INPUT0=x)
    assert out.shape == (6, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.floor(x) ** 2)


@pytest.mark.parametrize("bad_value", [100.0, 100.5, 1e6])
def test_failing_model_raises_when_any_value_is_100_or_more(bad_value: float) -> None:
    x = np.ones((3, 4), dtype=np.float32)
    x[2, 3] = bad_value  # one bad value among good rows fails the whole run
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="out of data bounds"):
        session(build_failing()).run(None, {"INPUT0": x})


def test_wide_mlp_matches_numpy_and_has_the_requested_layers() -> None:
    model = build_wide_mlp(input_size=8, hidden=12, layers=3, classes=5, seed=7)
    assert [node.op_type for node in model.graph.node] == ["Gemm", "Relu"] * 3 + ["Gemm", "Softmax"]
    x = np.random.default_rng(15).standard_normal((4, 8)).astype(np.float32)
    (probabilities,) = run_one(session(model), INPUT=x)
    assert probabilities.shape == (4, 5)
    np.testing.assert_allclose(
        probabilities, dense_classifier_reference(initializers(model), x, 4), rtol=1e-5
    )


def test_wide_mlp_default_sizes() -> None:
    weights = initializers(build_wide_mlp())
    assert weights["fc1.weight"].shape == (512, 2048)
    assert weights["fc3.weight"].shape == (2048, 2048)
    assert weights["fc4.weight"].shape == (2048, 16)


def test_seeds_change_weights_and_the_same_seed_repeats_them() -> None:
    assert build_mlp(seed=3).SerializeToString() == build_mlp(seed=3).SerializeToString()
    assert build_mlp(seed=3).SerializeToString() != build_mlp(seed=4).SerializeToString()


@pytest.mark.parametrize(
    "build",
    [lambda: build_mlp(hidden=0), lambda: build_wide_mlp(layers=0), lambda: build_image_cnn(classes=0)],
    ids=["mlp", "wide_mlp", "image_cnn"],
)
def test_builders_reject_empty_layers(build: Any) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        build()


# ---------------------------------------------------------------------------------------
# Writing repositories


def repository_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_write_example_repository_is_deterministic(tmp_path: Path) -> None:
    first = repository_bytes(write_example_repository(tmp_path / "a"))
    second = repository_bytes(write_example_repository(tmp_path / "b"))
    assert first == second
    assert repository_bytes(write_example_repository(tmp_path / "a")) == first  # rewriting in place


def test_rewriting_removes_a_stale_image_cnn_config(tmp_path: Path) -> None:
    write_example_repository(tmp_path)
    (tmp_path / "image_cnn" / "config.pbtxt").write_text('name: "image_cnn"\n')
    write_example_repository(tmp_path)
    assert not (tmp_path / "image_cnn" / "config.pbtxt").exists()
    assert (tmp_path / "image_cnn" / "1" / "model.onnx").is_file()


def test_save_model_adds_a_version_and_keeps_the_config(tmp_path: Path) -> None:
    first = save_model(build_text(), tmp_path, "text", config_pbtxt='name: "text"\n')
    second = save_model(build_text(), tmp_path, "text", version=2)
    assert first == tmp_path / "text" / "1" / "model.onnx"
    assert second == tmp_path / "text" / "2" / "model.onnx"
    assert second.read_bytes() == build_text().SerializeToString()
    assert (tmp_path / "text" / "config.pbtxt").read_text() == 'name: "text"\n'
    # No temporary files are left beside the model.
    assert sorted(path.name for path in (tmp_path / "text" / "2").iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("name", ["", "..", "a/b"])
def test_save_model_rejects_names_that_are_not_one_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="model name"):
        save_model(build_failing(), tmp_path, name)


def test_save_model_rejects_version_zero(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="version"):
        save_model(build_failing(), tmp_path, "failing", version=0)


def test_module_names_its_public_api() -> None:
    for name in [
        "write_example_repository",
        "build_simple",
        "build_mlp",
        "build_wide_mlp",
        "build_image_cnn",
        "build_text",
        "save_model",
        "EXAMPLE_MODELS",
    ]:
        assert hasattr(examples, name), name

"""runtime/backends/binding.py: the IO-binding executor on ORT's 'cpu' device with real pointers, against
the ordinary numpy path (OnnxBackend.run on the stacked batch), for every numeric datatype ORT binds."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.backends.binding import Binding, BoundRequest, DeviceTensor, OutputTarget, Placement
from runtime.backends.device import HOST
from runtime.backends.onnx import OnnxBackend, SessionSpec
from runtime.errors import ExecutionError
from runtime.examples import build_mlp, save_model
from runtime.types import DATATYPE_TO_NUMPY, Array
from tests.models import build_failing, build_identity

NUMERIC = [datatype for datatype in DATATYPE_TO_NUMPY if datatype != "BYTES"]


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, OnnxBackend]]:
    root = tmp_path_factory.mktemp("binding-models")
    backends = {
        datatype: OnnxBackend(SessionSpec(save_model(build_identity(datatype), root, f"id_{datatype}"), device="cpu"))
        for datatype in NUMERIC
    }
    yield backends
    for backend in backends.values():
        backend.close()


def placement(batched: bool = True, shapes: dict[str, tuple[int, ...] | None] | None = None) -> Placement:
    return Placement("model 'm' version 1", bindable=True, output_shapes=shapes or {}, batched=batched)


class Memory:
    """One block of host memory standing for a shared-memory region: tensors at chosen offsets."""

    def __init__(self, nbytes: int) -> None:
        self.buffer = np.zeros(nbytes + 64, np.uint8)
        self.base = (-self.buffer.ctypes.data) % 64  # offset 0 is 64-aligned, as an mmap'd region is
        self.used = 0

    def place(self, array: Array, skew: int) -> DeviceTensor:
        """`array` copied in at the next free offset, moved by `skew` bytes (0: aligned)."""
        start = self.base + self.used + skew
        raw = array.view(np.uint8).reshape(-1)
        self.buffer[start : start + raw.size] = raw
        self.used += skew + raw.size + (-(skew + raw.size)) % 64
        return DeviceTensor(HOST, int(self.buffer.ctypes.data) + start, array.dtype, array.shape, self.buffer)

    def target(self, nbytes: int, skew: int) -> tuple[OutputTarget, int]:
        start = self.base + self.used + skew
        self.used += skew + nbytes + (-(skew + nbytes)) % 64
        return OutputTarget(HOST, int(self.buffer.ctypes.data) + start, nbytes, self.buffer), start

    def read(self, start: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Array:
        count = int(np.prod(shape))
        return self.buffer[start : start + count * dtype.itemsize].view(dtype).reshape(shape)


def random_array(rng: np.random.Generator, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Array:
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    raw = rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    array = raw.view(dtype).reshape(shape)
    if dtype.kind == "f":
        array = np.nan_to_num(array, nan=1.5, posinf=2.5, neginf=-2.5)  # compared by bytes: no NaN payloads
    return array


request_plans = st.lists(
    st.tuples(
        st.integers(1, 3),  # rows
        st.sampled_from(["array", "pointer"]),  # how the input comes
        st.sampled_from(["host", "target", "small", "unwanted"]),  # how the output is wanted
        st.booleans(),  # skewed (element-aligned only: copied on a GPU, bound on the host)
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    datatype=st.sampled_from(NUMERIC), width=st.integers(1, 5), plans=request_plans, known=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_a_batch_by_pointer_answers_as_the_numpy_path(
    identities: dict[str, OnnxBackend], datatype: str, width: int, plans: list[tuple[int, str, str, bool]],
    known: bool, seed: int,
) -> None:  # fmt: skip
    """Random batches of several requests: inputs as arrays or as pointers at (mis)aligned offsets inside
    two regions, gathered into one batch; outputs scattered into targets, answered as host arrays, or not
    wanted; a target too small gets a host array (the lease refuses it with its numbers). With the
    output's shape `known` before the run, a lone request's aligned target is bound for ORT to write."""
    backend = identities[datatype]
    dtype = DATATYPE_TO_NUMPY[datatype]
    rng = np.random.default_rng(seed)
    inputs = [random_array(rng, dtype, (rows, width)) for rows, *_ in plans]
    expected = backend.run(0, {"INPUT0": np.concatenate(inputs)}, ["OUTPUT0"])["OUTPUT0"]  # the numpy path
    regions = [Memory(4096), Memory(4096)]
    outputs = Memory(4096)
    requests, spots = [], []
    for index, ((rows, source, wanted, skewed), array) in enumerate(zip(plans, inputs)):
        skew = dtype.itemsize if skewed else 0
        value: Array | DeviceTensor = regions[index % 2].place(array, skew) if source == "pointer" else array
        nbytes = array.nbytes
        binding = Binding()
        spot = None
        if wanted in ("target", "small"):
            target, spot = outputs.target(nbytes if wanted == "target" else nbytes - 1, skew)
            binding.outputs["OUTPUT0"] = target
        binding.host_outputs = frozenset() if wanted != "host" else frozenset({"OUTPUT0"})
        if isinstance(value, DeviceTensor):
            binding.inputs["INPUT0"] = value
        requests.append(BoundRequest({"INPUT0": value}, rows, binding))
        spots.append(spot)
    shapes: dict[str, tuple[int, ...] | None] = {"OUTPUT0": (-1, width) if known else None}
    results = backend.run_bound(0, requests, ["OUTPUT0"], placement(shapes=shapes))
    start = 0
    for (rows, _, wanted, _), request, spot, result in zip(plans, requests, spots, results):
        want = expected[start : start + rows]
        start += rows
        got = result["OUTPUT0"]
        assert got.shape == want.shape and got.dtype == want.dtype
        target = request.target("OUTPUT0")
        if wanted == "target":
            assert target is not None and target.written and spot is not None
            assert not any(got.strides)  # a stand-in: the data is in the client's memory
            np.testing.assert_array_equal(outputs.read(spot, dtype, want.shape).view(np.uint8), want.view(np.uint8))
        elif wanted in ("small", "host"):
            assert target is None or not target.written
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
        else:
            assert not any(got.strides)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnnxBackend]:
    backend = OnnxBackend(SessionSpec(save_model(build_mlp(), tmp_path_factory.mktemp("mlp"), "mlp"), device="cpu"))
    yield backend
    backend.close()


def test_a_lone_request_is_bound_in_place_and_its_output_written_by_ort(mlp: OnnxBackend) -> None:
    """The mlp's output shape is known ([rows, 4]), so a lone request's output is bound to its target and
    ORT writes it there; the input is bound where it lies."""
    data = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    region = Memory(1024)
    tensor = region.place(data, 0)
    target, spot = region.target(2 * 4 * 4, 0)
    binding = Binding({"INPUT": tensor}, {"PROBABILITIES": target}, frozenset())
    shapes: dict[str, tuple[int, ...] | None] = {"PROBABILITIES": (-1, 4)}
    [result] = mlp.run_bound(0, [BoundRequest({"INPUT": tensor}, 2, binding)], ["PROBABILITIES"], placement(shapes=shapes))
    want = mlp.run(0, {"INPUT": data}, ["PROBABILITIES"])["PROBABILITIES"]
    assert target.written and result["PROBABILITIES"].shape == (2, 4)
    np.testing.assert_allclose(region.read(spot, np.dtype(np.float32), (2, 4)), want, rtol=1e-6)


def test_the_output_of_a_batch_scatters_to_each_requests_target(mlp: OnnxBackend) -> None:
    rng = np.random.default_rng(4)
    region = Memory(8192)
    requests, cases = [], []
    for rows in (1, 3, 2):
        data = rng.standard_normal((rows, 16)).astype(np.float32)
        tensor = region.place(data, 4)  # element-aligned, not 64-aligned: gathered by copy all the same
        target, spot = region.target(rows * 16, 0)
        requests.append(BoundRequest({"INPUT": tensor}, rows, Binding({"INPUT": tensor}, {"PROBABILITIES": target}, frozenset())))
        cases.append((data, spot, rows))
    mlp.run_bound(0, requests, ["PROBABILITIES"], placement(shapes={"PROBABILITIES": (-1, 4)}))
    for data, spot, rows in cases:
        want = mlp.run(0, {"INPUT": data}, ["PROBABILITIES"])["PROBABILITIES"]
        np.testing.assert_allclose(region.read(spot, np.dtype(np.float32), (rows, 4)), want, rtol=1e-5)


def test_a_failing_run_is_an_execution_error_and_writes_nothing(tmp_path: Path) -> None:
    backend = OnnxBackend(SessionSpec(save_model(build_failing(), tmp_path, "failing"), device="cpu"))
    try:
        region = Memory(1024)
        tensor = region.place(np.full((1, 4), 1000, np.float32), 0)  # an out-of-range index: ORT raises
        target, _ = region.target(16, 0)
        request = BoundRequest({"INPUT0": tensor}, 1, Binding({"INPUT0": tensor}, {"OUTPUT0": target}, frozenset()))
        with pytest.raises(ExecutionError, match="model execution failed"):
            backend.run_bound(0, [request], ["OUTPUT0"], placement(shapes={"OUTPUT0": (-1, 4)}))
        assert not target.written
    finally:
        backend.close()

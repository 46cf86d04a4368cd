"""runtime/frontend.py's RemoteEngine and RemoteAdmin against a real engine process (runtime/engine_host.py).

The engine runs as `python -m runtime _engine` (as the supervisor starts it); the test process plays
the front ends, connecting over the ipc channel with slabs of its own.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from runtime.config import Settings, settings_to_json
from runtime.errors import Code, RuntimeServingError
from runtime.examples import save_model
from runtime.frontend import Connection, connect
from runtime.repository.model_config import config_to_json
from runtime.types import InferRequest, RequestedOutput
from tests.models import build_identity

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
WINDOW_US = 100_000
BATCHED = f"max_batch_size: 16\ndynamic_batching {{ max_queue_delay_microseconds: {WINDOW_US} }}\n"
# The first request opens a window this long; a second one waits in it too, to be cancelled.
# Triton's fixed window: a lone request waits out the whole second (the adaptive window would not).
SLOW = (
    "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 1000000 }\n"
    'parameters { key: "batch_window" value: { string_value: "fixed" } }\n'
)
SLAB_BYTES = 1024 * 1024


def identity(datatype: str) -> str:
    return f"identity_{datatype.lower()}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("frontend") / "repo"
    for datatype in DATATYPES:
        save_model(build_identity(datatype), root, identity(datatype))
    save_model(build_identity("FP32"), root, "batched", config_pbtxt=BATCHED)
    save_model(build_identity("FP32"), root, "slow", config_pbtxt=SLOW)
    return root


@pytest.fixture(scope="module")
def engine_process(repo: Path) -> Iterator[tuple[str, Settings]]:
    settings = Settings(
        model_repository=repo,
        model_control_mode="explicit",
        load_model=["*"],
        allow_metrics=False,
        execution_provider="cpu",
        worker_slab_bytes=SLAB_BYTES,
        exit_timeout_secs=5,
    )
    address = f"\0model-runtime-test-{os.getpid()}-{secrets.token_hex(4)}"
    env = {**os.environ, "MODEL_RUNTIME_CHILD_SETTINGS": settings_to_json(settings)}
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "_engine", "--engine-address", "@" + address[1:]],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(b"READY "), line
        assert json.loads(line[len(b"READY ") :]) == {"metrics": None}
        yield address, settings
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            if process.stdout is not None:
                process.stdout.close()
        assert status == 0


@pytest.fixture
async def front(engine_process: tuple[str, Settings]) -> AsyncIterator[Connection]:
    address, settings = engine_process
    link = await connect(settings, address, 0)
    yield link
    await link.close()


def sample(datatype: str, rows: int = 2) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"a", b"\x00bc"], [b"", "é".encode()]][:rows], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]][:rows])
    return (np.arange(rows * 2).reshape(rows, 2) + 1).astype(datatype.lower().replace("fp", "float"))


@pytest.mark.parametrize("datatype", DATATYPES)
async def test_infer_round_trips_every_datatype(front: Connection, datatype: str) -> None:
    data = sample(datatype)
    response = await front.engine.infer(InferRequest(identity(datatype), "", {"INPUT0": data}, id="r1", protocol="grpc"))
    try:
        assert (response.model_name, response.model_version, response.id) == (identity(datatype), "1", "r1")
        out = response.outputs["OUTPUT0"]
        assert out.shape == data.shape and out.dtype == data.dtype
        assert out.tolist() == data.tolist()
    finally:
        response.release()
    # Every block went back: the request slab at once, the response slab on release.
    await asyncio.sleep(0.05)
    assert front.requests.allocated_blocks == 0


async def test_requested_outputs_and_metadata(front: Connection) -> None:
    wanted = [RequestedOutput("OUTPUT0", binary=True)]
    response = await front.engine.infer(InferRequest("identity_fp32", "", {"INPUT0": sample("FP32")}, requested_outputs=wanted))
    response.release()
    assert response.requested_outputs == {"OUTPUT0": wanted[0]}
    assert await front.engine.live() and await front.engine.ready()
    assert await front.engine.model_ready("identity_fp32") and not await front.engine.model_ready("missing")
    name, _, extensions = await front.engine.server_metadata()
    assert name and "statistics" in extensions
    meta = await front.engine.model_metadata("identity_bytes")
    assert (meta.name, meta.versions, meta.platform) == ("identity_bytes", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("INPUT0", "BYTES", (-1, -1))]
    config = await front.engine.model_config("batched")
    doc = config_to_json(config)
    assert doc["max_batch_size"] == 16
    assert int(doc["dynamic_batching"]["max_queue_delay_microseconds"]) == WINDOW_US


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda f: f.engine.model_metadata("missing"), Code.NOT_FOUND),
        (lambda f: f.engine.model_ready("missing", strict=True), Code.NOT_FOUND),
        (lambda f: f.engine.statistics("missing"), Code.NOT_FOUND),
        (lambda f: f.engine.infer(InferRequest("identity_fp32", "", {"WRONG": np.ones((1, 2), np.float32)})), Code.INVALID_ARGUMENT),
        (lambda f: f.admin.load("no_such_model", {}), Code.NOT_FOUND),
        (lambda f: f.admin.load("x", {"nonsense": "1"}), Code.INVALID_ARGUMENT),
        (lambda f: f.admin.unload("never_loaded"), Code.NOT_FOUND),
    ],
)
async def test_errors_keep_their_codes(front: Connection, call, code: Code) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeServingError) as caught:
        await call(front)
    assert caught.value.code is code, caught.value.message


async def test_admin_index_and_token(front: Connection) -> None:
    rows = await front.admin.index(True)
    assert {(row.name, row.version, row.state) for row in rows} >= {("batched", "1", "READY")}
    front.admin.authenticate(None)  # no token configured


async def test_cancel_takes_the_request_out_of_the_queue(front: Connection) -> None:
    x = np.ones((1, 2), np.float32)
    before = (await front.engine.statistics("slow"))[0]
    first = asyncio.ensure_future(front.engine.infer(InferRequest("slow", "", {"INPUT0": x})))
    await asyncio.sleep(0.2)  # in the 1 s window
    queued = asyncio.ensure_future(front.engine.infer(InferRequest("slow", "", {"INPUT0": x})))
    await asyncio.sleep(0.2)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert front.requests.allocated_blocks == 1  # the cancelled request's blocks came back
    (await first).release()
    await asyncio.sleep(1.2)  # long enough for the cancelled one to have run, had it stayed queued
    after = (await front.engine.statistics("slow"))[0]
    assert after.inference_count - before.inference_count == 1
    assert after.execution_count - before.execution_count == 1


async def test_a_full_slab_is_unavailable(front: Connection) -> None:
    big = np.zeros((2, SLAB_BYTES // 16 + 16), np.float32)  # over half the slab: two cannot fit at once
    with pytest.raises(RuntimeServingError) as caught:
        await front.engine.infer(InferRequest("identity_fp32", "", {"INPUT0": np.zeros((1, SLAB_BYTES), np.float32)}))
    assert caught.value.code is Code.UNAVAILABLE and "request slab" in caught.value.message
    # Response slab: the outputs of an unreleased response still hold half of it.
    held = await front.engine.infer(InferRequest("identity_fp32", "", {"INPUT0": big}))
    with pytest.raises(RuntimeServingError) as caught:
        await front.engine.infer(InferRequest("identity_fp32", "", {"INPUT0": big}))
    assert caught.value.code is Code.UNAVAILABLE and "response slab" in caught.value.message
    held.release()
    again = await front.engine.infer(InferRequest("identity_fp32", "", {"INPUT0": big}))
    again.release()


async def test_two_front_ends_share_batches(engine_process: tuple[str, Settings]) -> None:
    address, settings = engine_process
    links = [await connect(settings, address, index) for index in (1, 2)]
    try:
        before = (await links[0].engine.statistics("batched"))[0]
        x = np.ones((1, 2), np.float32)

        async def one(link: Connection) -> None:
            (await link.engine.infer(InferRequest("batched", "", {"INPUT0": x}))).release()

        await asyncio.gather(*[one(link) for link in links for _ in range(8)])
        after = (await links[1].engine.statistics("batched"))[0]
        rows = after.inference_count - before.inference_count
        executions = after.execution_count - before.execution_count
        assert rows == 16 and executions < 8, (rows, executions)
    finally:
        for link in links:
            await link.close()


async def test_the_catalogue_answers_while_the_engine_is_stopped(engine_process: tuple[str, Settings]) -> None:
    """Readiness, metadata and configuration of what serves come from the front end's catalogue
    (runtime/catalogue.py): with the engine process stopped they still answer, as the engine would."""
    address, settings = engine_process
    link = await connect(settings, address, 0)
    expected = (await link.engine.model_metadata("batched"), await link.engine.model_config("batched", "1"))
    os.kill(link.engine_pid, signal.SIGSTOP)
    try:
        answers = await asyncio.wait_for(
            asyncio.gather(
                link.engine.model_ready("batched", "1"),
                link.engine.model_metadata("batched"),
                link.engine.model_config("batched", "1"),
            ),
            timeout=5,
        )
    finally:
        os.kill(link.engine_pid, signal.SIGCONT)
        await link.close()
    assert answers == [True, *expected]
    assert expected[0].inputs[0].name == "INPUT0" and expected[1].max_batch_size == 16


async def test_a_change_makes_every_catalogue_stale_before_the_call_returns(engine_process: tuple[str, Settings]) -> None:
    """After an admin call through one front end returns, no other front end answers from the state
    before it: the engine bumps the shared generation counter with the change, before its reply."""
    address, settings = engine_process
    first, second = await connect(settings, address, 0), await connect(settings, address, 1)
    try:
        catalogue = second.engine.catalogue
        assert catalogue is not None and catalogue.lookup("batched", "") is not None  # no split: "" is answered
        await first.admin.traffic("batched", {"1": 1.0})
        # Whether or not the new document has arrived, "" is no longer answered from a document:
        # a split routes each request, which is the engine's alone.
        assert catalogue.lookup("batched", "") is None
        await first.admin.traffic("batched", {})

        async def republished() -> None:
            while catalogue.lookup("batched", "") is None:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(republished(), timeout=5)
    finally:
        await first.close()
        await second.close()


async def test_a_bad_request_is_refused_before_it_crosses_the_hop(front: Connection) -> None:
    """Checked against the catalogue's schema in the front end: the datatype error, not the request
    slab's (the tensor is larger than the whole slab, so it could never have been sent)."""
    too_big_and_wrong = np.zeros((1, SLAB_BYTES // 4), np.float64)
    with pytest.raises(RuntimeServingError) as caught:
        await front.engine.infer(InferRequest("batched", "", {"INPUT0": too_big_and_wrong}))
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert "input 'INPUT0' has datatype FP64, but the model expects FP32" in caught.value.message

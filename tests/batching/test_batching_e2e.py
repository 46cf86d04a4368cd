"""The dynamic batcher end to end: real server, real clients, many at once."""
from __future__ import annotations

from contextlib import closing

import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from runtime.examples import save_model
from tests.models import FAILING_INSTANCE_GROUP, FIXED_WINDOW, build_failing, build_identity
from tests.monitoring.scrape import eventually, scrape
from tests.serving import RunningServer, running_server, thread_http_client

WINDOW_US = 20_000
SLOW_WINDOW_US = 1_500_000


def build_repo(root: Path) -> Path:
    save_model(
        build_identity("FP32"), root, "batched",
        config_pbtxt=f"max_batch_size: 16\ndynamic_batching {{ max_queue_delay_microseconds: {WINDOW_US} }}\n",
    )
    # A long window and a tiny queue: requests sit in the queue long enough to time out or be cancelled.
    save_model(
        build_identity("FP32"), root, "slow_window",
        config_pbtxt=(
            f"max_batch_size: 16\ndynamic_batching {{ max_queue_delay_microseconds: {SLOW_WINDOW_US}\n"
            "  default_queue_policy { max_queue_size: 2 allow_timeout_override: true } }\n" + FIXED_WINDOW
        ),
    )
    save_model(
        build_failing(), root, "failing_batched",
        config_pbtxt="max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 100000 }\n"
        + FAILING_INSTANCE_GROUP + FIXED_WINDOW,
    )
    return root


@pytest.fixture(scope="module", params=[1, 3], ids=["workers1", "workers3"])
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("batching")
    with running_server(build_repo(root / "repo"), root / "srv", workers=request.param) as running:
        yield running


def stats(server: RunningServer, model: str) -> tuple[int, int]:
    """(inference_count rows, execution_count batches) from the Triton statistics extension."""
    entry = httpclient.InferenceServerClient(server.http_url).get_inference_statistics(model)["model_stats"][0]
    return int(entry["inference_count"]), int(entry["execution_count"])


def fp32_input(module, data: np.ndarray):  # type: ignore[no-untyped-def]
    tensor = module.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def test_every_response_holds_exactly_its_own_rows(server: RunningServer) -> None:
    rows_before, batches_before = stats(server, "batched")
    errors: list[str] = []
    sent_rows = [0]
    lock = threading.Lock()

    def client_loop(client_id: int) -> None:
        module = httpclient if client_id % 2 else grpcclient
        opened = (
            thread_http_client(server.http_url)
            if module is httpclient
            else closing(grpcclient.InferenceServerClient(server.grpc_url))
        )
        with opened as client:
            send_all(module, client, client_id)

    def send_all(module, client, client_id: int) -> None:  # type: ignore[no-untyped-def]
        for request_number in range(8):
            rows = 1 + (client_id + request_number) % 3
            data = (np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + client_id * 1000 + request_number * 10)
            try:
                got = client.infer("batched", [fp32_input(module, data)]).as_numpy("OUTPUT0")
            except Exception as exc:
                errors.append(str(exc))
                continue
            if not np.array_equal(got, data):
                errors.append(f"client {client_id} request {request_number}: got rows of someone else")
            with lock:
                sent_rows[0] += rows

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    rows_after, batches_after = stats(server, "batched")
    assert rows_after - rows_before == sent_rows[0]
    requests = 16 * 8
    assert batches_after - batches_before < requests / 2, "requests were not batched together"


def test_mixed_shapes_never_merge(server: RunningServer) -> None:
    results: dict[int, np.ndarray] = {}
    errors: list[str] = []

    def send(width: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        data = np.full((1, width), float(width), dtype=np.float32)
        try:
            results[width] = client.infer("batched", [fp32_input(grpcclient, data)]).as_numpy("OUTPUT0")
        except Exception as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=send, args=(width,)) for width in (2, 3, 5, 7, 11, 13)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    for width, got in results.items():
        np.testing.assert_array_equal(got, np.full((1, width), float(width), dtype=np.float32))


def test_full_queue_is_rejected_at_once(server: RunningServer) -> None:
    outcomes: list[tuple[str, float]] = []

    def send() -> None:
        with thread_http_client(server.http_url, network_timeout=30) as client:
            started = time.monotonic()
            try:
                client.infer("slow_window", [fp32_input(httpclient, np.ones((1, 4), dtype=np.float32))])
                outcomes.append(("ok", time.monotonic() - started))
            except InferenceServerException as exc:
                outcomes.append((f"{exc.status()}:{exc.message()}", time.monotonic() - started))

    threads = [threading.Thread(target=send) for _ in range(5)]
    for thread in threads[:2]:
        thread.start()
    eventually(lambda: queue_depth(server, "slow_window") == 2, timeout_s=SLOW_WINDOW_US / 2e6, what="a full queue")
    for thread in threads[2:]:
        thread.start()
    for thread in threads:
        thread.join(30)
    served = [o for o in outcomes if o[0] == "ok"]
    rejected = [o for o in outcomes if o[0] != "ok"]
    assert len(served) == 2 and len(rejected) == 3, outcomes
    for message, seconds in rejected:
        assert message.startswith("503:") and "queue is full" in message
        assert seconds < 1.0, "a full queue must answer at once"


def test_timeout_parameter_expires_a_queued_request(server: RunningServer) -> None:
    rows_before, _ = stats(server, "slow_window")
    client = httpclient.InferenceServerClient(server.http_url)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("slow_window", [fp32_input(httpclient, np.ones((1, 4), dtype=np.float32))], timeout=100_000)
    assert caught.value.status() == "504" and "timed out" in caught.value.message()
    assert time.monotonic() - started < 1.0
    time.sleep(SLOW_WINDOW_US / 1e6 + 0.3)
    assert stats(server, "slow_window")[0] == rows_before, "a timed-out request must never execute"


def test_grpc_deadline_is_honoured_in_the_queue(server: RunningServer) -> None:
    rows_before, _ = stats(server, "slow_window")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("slow_window", [fp32_input(grpcclient, np.ones((1, 4), dtype=np.float32))], client_timeout=0.2)
    assert "DEADLINE_EXCEEDED" in caught.value.status()
    time.sleep(SLOW_WINDOW_US / 1e6 + 0.3)
    assert stats(server, "slow_window")[0] == rows_before


def queue_depth(server: RunningServer, model: str) -> float | None:
    return scrape(server.metrics_url).value("model_runtime_queue_depth", model=model, version="1")


def wait_until_queued(server: RunningServer, model: str) -> float:
    """Wait until one request sits in the model's queue; return when it was seen there (monotonic)."""
    eventually(lambda: queue_depth(server, model) == 1, timeout_s=SLOW_WINDOW_US / 2e6, what="one queued request")
    return time.monotonic()


def assert_leaves_the_queue_before_its_window(server: RunningServer, model: str, queued_at: float) -> None:
    """The request left the queue (depth 0) well before its window would have sent it to the model."""
    eventually(lambda: queue_depth(server, model) == 0, timeout_s=SLOW_WINDOW_US / 4e6, what="an empty queue")
    assert time.monotonic() - queued_at < SLOW_WINDOW_US / 1e6 / 2, "it stayed queued until its window"


def wait_past_the_window(queued_at: float) -> None:
    # The scenario itself: a request that never executes is only seen by waiting out its window.
    time.sleep(max(0.0, queued_at + SLOW_WINDOW_US / 1e6 + 0.3 - time.monotonic()))


def test_cancelled_grpc_call_leaves_the_queue(server: RunningServer) -> None:
    rows_before, _ = stats(server, "slow_window")
    assert queue_depth(server, "slow_window") == 0
    client = grpcclient.InferenceServerClient(server.grpc_url)
    call = client.async_infer(
        "slow_window", [fp32_input(grpcclient, np.ones((1, 4), dtype=np.float32))], callback=lambda *_, **__: None
    )
    queued_at = wait_until_queued(server, "slow_window")
    call.cancel()
    assert_leaves_the_queue_before_its_window(server, "slow_window", queued_at)
    wait_past_the_window(queued_at)
    assert stats(server, "slow_window")[0] == rows_before, "a cancelled request must never execute"


def test_closed_http_connection_leaves_the_queue(server: RunningServer) -> None:
    rows_before, _ = stats(server, "slow_window")
    assert queue_depth(server, "slow_window") == 0
    body = b'{"inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(
            b"POST /v2/models/slow_window/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        queued_at = wait_until_queued(server, "slow_window")
    assert_leaves_the_queue_before_its_window(server, "slow_window", queued_at)
    wait_past_the_window(queued_at)
    assert stats(server, "slow_window")[0] == rows_before, "a request whose client left must never execute"


def test_failing_batch_fails_its_requests_and_the_next_batch_runs(server: RunningServer) -> None:
    outcomes: dict[str, str] = {}

    def send(label: str, value: float) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            client.infer("failing_batched", [fp32_input(grpcclient, np.full((1, 4), value, dtype=np.float32))])
            outcomes[label] = "ok"
        except InferenceServerException as exc:
            outcomes[label] = exc.status()

    threads = [threading.Thread(target=send, args=args) for args in (("good1", 1.0), ("bad", 500.0), ("good2", 2.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes == {label: "StatusCode.INTERNAL" for label in ("good1", "bad", "good2")}
    send("after", 3.0)
    assert outcomes["after"] == "ok"

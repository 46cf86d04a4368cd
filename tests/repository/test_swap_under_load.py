"""Swap versions back and forth, through both admin APIs, while clients keep sending requests.

Must hold: zero failed requests, and every response comes from a version that was serving at
some moment while that request was in flight (a swap's switch happens inside its admin call).
"""
from __future__ import annotations

import json
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from runtime.examples import save_model
from tests.repository.models import build_scale
from tests.serving import running_server, thread_http_client

FACTORS = {"1": 1.0, "2": 2.0}
CLIENTS_PER_PROTOCOL = 3
SWAPS = 6
MAX_REQUESTS_PER_CLIENT = 4000


@dataclass
class Answer:
    started: float
    finished: float
    version: str
    value: float


@dataclass
class Swap:
    started: float
    finished: float
    source: str
    target: str


def _client_loop(protocol: str, url: str, stop: threading.Event, answers: list[Answer], errors: list[str]) -> None:
    module = httpclient if protocol == "http" else grpcclient
    opened = thread_http_client(url) if protocol == "http" else closing(grpcclient.InferenceServerClient(url))
    with opened as client:
        _send_until_stopped(module, client, protocol, stop, answers, errors)


def _send_until_stopped(module, client, protocol: str, stop: threading.Event, answers: list[Answer], errors: list[str]) -> None:  # type: ignore[no-untyped-def]
    data = np.full((1, 4), 1.0, dtype=np.float32)
    tensor = module.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data)
    for _ in range(MAX_REQUESTS_PER_CLIENT):
        if stop.is_set():
            break
        started = time.monotonic()
        try:
            result = client.infer("scale", [tensor])
        except Exception as exc:  # every failure counts against the test
            errors.append(f"{protocol}: {exc}")
            continue
        finished = time.monotonic()
        response = result.get_response()
        version = response["model_version"] if protocol == "http" else response.model_version
        answers.append(Answer(started, finished, version, float(result.as_numpy("OUTPUT0")[0, 0])))


def _possible_at(t: float, swaps: list[Swap], initial: str) -> set[str]:
    current = initial
    for swap in swaps:
        if swap.started <= t <= swap.finished:
            return {swap.source, swap.target}
        if swap.finished < t:
            current = swap.target
    return {current}


def _allowed(answer: Answer, swaps: list[Swap], initial: str) -> set[str]:
    allowed = _possible_at(answer.started, swaps, initial) | _possible_at(answer.finished, swaps, initial)
    for swap in swaps:
        if swap.started <= answer.finished and swap.finished >= answer.started:
            allowed |= {swap.source, swap.target}
    return allowed


@pytest.mark.parametrize("workers", [1, 3], ids=["workers1", "workers3"])
def test_zero_failures_while_swapping(tmp_path: Path, workers: int) -> None:
    repo = tmp_path / "repo"
    save_model(build_scale(1.0), repo, "scale", 1, config_pbtxt="max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n")
    save_model(build_scale(2.0), repo, "scale", 2)
    explicit = ["--model-control-mode", "explicit", "--load-model", "scale"]
    with running_server(repo, tmp_path / "srv", explicit, workers=workers) as server:
        stop = threading.Event()
        answers: list[Answer] = []
        errors: list[str] = []
        threads = [
            threading.Thread(target=_client_loop, args=(protocol, url, stop, answers, errors))
            for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url))
            for _ in range(CLIENTS_PER_PROTOCOL)
        ]
        for thread in threads:
            thread.start()
        swaps: list[Swap] = []
        admin_http = httpclient.InferenceServerClient(server.http_url)
        admin_grpc = grpcclient.InferenceServerClient(server.grpc_url)
        current = "2"
        try:
            time.sleep(0.5)
            for number in range(SWAPS):
                target = "1" if current == "2" else "2"
                config = json.dumps(
                    {
                        "max_batch_size": 8,
                        "dynamic_batching": {"max_queue_delay_microseconds": 2000},
                        "version_policy": {"specific": {"versions": [int(target)]}},
                    }
                )
                admin = admin_http if number % 2 == 0 else admin_grpc
                started = time.monotonic()
                admin.load_model("scale", config=config)
                swaps.append(Swap(started, time.monotonic(), current, target))
                current = target
                time.sleep(0.4)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    assert not errors, f"{len(errors)} failed requests, first: {errors[:3]}"
    assert len(swaps) == SWAPS
    assert len(answers) > 200, "too few requests to show anything"
    for answer in answers:
        assert answer.value == FACTORS[answer.version], answer
        assert answer.version in _allowed(answer, swaps, "2"), (answer, swaps)
    # Both versions really served between swaps.
    assert {a.version for a in answers} == {"1", "2"}

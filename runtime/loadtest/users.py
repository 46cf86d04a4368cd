"""Locust users for a KServe V2 server (model-runtime, Triton): `V2HttpUser` and `V2GrpcUser`.

Importing this module imports locust, which monkey-patches the process for gevent: import it only in
a locust process (a locustfile), never in a server or a test runner. `bench/locustfile.py` uses them:

    locust -f bench/locustfile.py V2HttpUser --headless -u 8 -r 8 -t 30s --host http://127.0.0.1:8000
    locust -f bench/locustfile.py V2GrpcUser --headless -u 8 -r 8 -t 30s --host 127.0.0.1:8001

Options (flags, or LOCUST_<NAME> environment variables): --model, --model-version, --batch-size,
--variable-dim, --inputs-file, --tensor-format json|binary|both (HTTP), --grpc-host (the gRPC user's
target when both users run at once: from an http:// --host only Triton's 8000 -> 8001 is derived,
any other HTTP URL is refused at start), --user-rate (requests per second per user; 0 = back to back).
Without --inputs-file each user asks the server for the model's metadata once and makes its inputs
from it (see runtime.loadtest.inputs).
"""
from __future__ import annotations

import itertools
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from locust import FastHttpUser, User, constant_throughput, events, task
from locust.exception import StopUser

import grpc  # isort: skip  (after locust: gevent must patch the standard library first)
import grpc.experimental.gevent as grpc_gevent  # isort: skip

from runtime.loadtest import inputs
from runtime.loadtest.targets import TargetError, grpc_target

# Make grpcio's I/O cooperate with gevent, as locust documents for gRPC users: after the standard
# library is patched (importing locust did that), before any channel exists.
grpc_gevent.init_gevent()

SERVICE = "/inference.GRPCInferenceService/"
_DIGITS = re.compile(r"\d+")


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _add_options(parser: Any) -> None:
    parser.add_argument("--model", default="mlp", env_var="LOCUST_MODEL", help="model to send inference requests to")
    parser.add_argument("--model-version", default="", env_var="LOCUST_MODEL_VERSION", help="version ('' = the server's choice)")
    parser.add_argument("--batch-size", type=int, default=1, env_var="LOCUST_BATCH_SIZE", help="rows per request (the first -1 dim)")
    parser.add_argument(
        "--variable-dim", type=int, default=16, env_var="LOCUST_VARIABLE_DIM", help="size of every other -1 dim"
    )
    parser.add_argument(
        "--inputs-file",
        default="",
        env_var="LOCUST_INPUTS_FILE",
        help="JSON file of V2 request bodies (one, or a list: sent in turn) or an .npz of input arrays; "
        "default: random inputs made from the model's metadata",
    )
    parser.add_argument(
        "--tensor-format",
        choices=["json", "binary", "both"],
        default="both",
        env_var="LOCUST_TENSOR_FORMAT",
        help="HTTP: JSON tensors, the binary tensor extension, or alternate between them",
    )
    parser.add_argument(
        "--grpc-host",
        default="",
        env_var="LOCUST_GRPC_HOST",
        help="gRPC target host:port (default: --host when it is host:port; from an http:// --host only "
        "Triton's ports are derived, 8000 -> 8001)",
    )
    parser.add_argument(
        "--user-rate",
        type=float,
        default=0.0,
        env_var="LOCUST_USER_RATE",
        help="requests per second per user (users x rate = offered load); 0: each user sends back to back",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=60.0, env_var="LOCUST_REQUEST_TIMEOUT", help="seconds (gRPC deadline)"
    )


@events.init.add_listener  # type: ignore[untyped-decorator]
def _check_grpc_target(environment: Any, **kwargs: Any) -> None:
    """Refuse at start, with what to pass, a run whose gRPC user has no gRPC target (runtime.loadtest.targets)."""
    options = environment.parsed_options
    if options is None or V2GrpcUser not in (environment.user_classes or []):
        return
    try:
        target = grpc_target(options.grpc_host, environment.host or "")
    except TargetError as exc:
        logging.getLogger(__name__).error("%s", exc)
        sys.exit(2)
    if not options.grpc_host and target != re.sub(r"^[a-z]+://", "", environment.host or "").rstrip("/"):
        logging.getLogger(__name__).info("V2GrpcUser: no --grpc-host; using %s (Triton's gRPC port beside HTTP 8000)", target)


def _model_path(options: Any) -> str:
    version = options.model_version
    return f"/v2/models/{options.model}" + (f"/versions/{version}" if version else "")


def _failure_text(message: str) -> str:
    """One failure row per kind of error, not per request: numbers in messages become N."""
    return _DIGITS.sub("N", message)[:200]


class _Workload:
    """What one user sends: the model, its samples in turn, and the user's pacing."""

    def __init__(self, options: Any, fetch_metadata: Callable[[], dict[str, Any]]) -> None:
        self.model: str = options.model
        self.version: str = options.model_version
        if options.inputs_file:
            self.samples = inputs.load_samples(Path(options.inputs_file))
        else:
            metadata = fetch_metadata()
            self.samples = [inputs.sample_from_metadata(metadata, options.batch_size, options.variable_dim)]
        rate: float = options.user_rate
        self.wait: Callable[[User], float] | None = constant_throughput(rate) if rate > 0 else None

    def cycle(self, encode: Callable[[inputs.Sample], Any]) -> Iterator[Any]:
        return itertools.cycle([encode(sample) for sample in self.samples])


class V2HttpUser(FastHttpUser):
    """POST /v2/models/{m}/infer over HTTP/1.1 keep-alive (geventhttpclient), JSON or binary tensors.

    Each request is named `infer <model> [json]` or `[binary]` in locust's statistics; an answer other
    than 200 fails with `HTTP <status>: <error>`, a 200 with a malformed body fails too.
    """

    network_timeout = 60.0
    connection_timeout = 10.0
    workload: _Workload

    def wait_time(self) -> float:
        return self.workload.wait(self) if self.workload.wait is not None else 0.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.workload = _Workload(options, self._metadata)
        formats = {"json": ["json"], "binary": ["binary"], "both": ["json", "binary"]}[options.tensor_format]
        bodies: dict[str, Iterator[tuple[bytes, dict[str, str]]]] = {}
        if "json" in formats:
            bodies["json"] = self.workload.cycle(lambda s: (inputs.json_body(s), {"Content-Type": "application/json"}))
        if "binary" in formats:
            bodies["binary"] = self.workload.cycle(self._binary)
        self._bodies = bodies
        self._formats = itertools.cycle(formats)
        self._path = _model_path(options) + "/infer"

    @staticmethod
    def _binary(sample: inputs.Sample) -> tuple[bytes, dict[str, str]]:
        body, header_length = inputs.binary_body(sample)
        return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}

    def _metadata(self) -> dict[str, Any]:
        path = _model_path(self.environment.parsed_options)
        with self.client.get(path, name="model metadata", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(_failure_text(f"HTTP {response.status_code}: {_error_of(response.content)}"))
                raise StopUser()
            metadata: dict[str, Any] = response.json()
            return metadata

    @task
    def infer(self) -> None:
        kind = next(self._formats)
        body, headers = next(self._bodies[kind])
        name = f"infer {self.workload.model} [{kind}]"
        # The body is bytes: FastHttpSession sends str or bytes as they are (its annotation names str only).
        post = self.client.post(self._path, data=body, headers=headers, name=name, catch_response=True)  # type: ignore[arg-type]
        with post as response:
            if response.status_code != 200:
                response.failure(_failure_text(f"HTTP {response.status_code}: {_error_of(response.content)}"))
                return
            try:
                inputs.check_http_answer(response.content or b"", response.headers.get("Inference-Header-Content-Length"))
            except (ValueError, TypeError) as exc:
                response.failure(f"malformed answer: {exc}")


def _error_of(content: bytes | None) -> str:
    try:
        return str(orjson.loads(content or b"")["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return (content or b"")[:120].decode("utf-8", "replace")


class GrpcCallError(Exception):
    """A failed call as locust groups it: status code and message, numbers elided."""


class V2GrpcUser(User):
    """ModelInfer over gRPC (one channel per user, raw tensor contents), via a gevent-patched grpcio.

    Every call is reported through locust's request event (`request_type` grpc, name
    `ModelInfer <model>`) with its response size in bytes and, when it failed, the status as exception.
    """

    workload: _Workload

    def wait_time(self) -> float:
        return self.workload.wait(self) if self.workload.wait is not None else 0.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        try:
            target = grpc_target(options.grpc_host, self.host or "")
        except TargetError:  # refused at start already (_check_grpc_target); a user made by hand stops
            raise StopUser() from None
        self.timeout_s: float = options.request_timeout
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        )
        self._model_infer = self.channel.unary_unary(SERVICE + "ModelInfer")
        self._model_metadata = self.channel.unary_unary(SERVICE + "ModelMetadata")
        self.workload = _Workload(options, self._metadata)
        self._requests = self.workload.cycle(
            lambda sample: inputs.grpc_request_bytes(self.workload.model, self.workload.version, sample)
        )
        self._name = f"ModelInfer {self.workload.model}"

    def on_stop(self) -> None:
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.close()

    def _metadata(self) -> dict[str, Any]:
        from runtime._pb import grpc_service_pb2 as pb

        options = self.environment.parsed_options
        request = pb.ModelMetadataRequest(name=options.model, version=options.model_version).SerializeToString()
        raw = self.call("ModelMetadata", self._model_metadata, request, lambda raw: len(raw))
        if raw is None:
            raise StopUser()
        return inputs.grpc_metadata(raw)

    def call(
        self, name: str, method: Callable[..., bytes], request: bytes, check: Callable[[bytes], int]
    ) -> bytes | None:
        """One unary call, reported to locust; the answer's bytes, or None when it failed."""
        started = time.perf_counter()
        raw: bytes | None = None
        exception: Exception | None = None
        try:
            raw = method(request, timeout=self.timeout_s)
            check(raw)
        except grpc.RpcError as exc:
            details = exc.details() if hasattr(exc, "details") else str(exc)
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            exception = GrpcCallError(_failure_text(f"{code}: {details}"))
        except ValueError as exc:
            exception = GrpcCallError(f"malformed answer: {exc}")
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=len(raw) if raw is not None else 0,
            response=raw,
            context={},
            exception=exception,
        )
        return raw if exception is None else None

    @task
    def infer(self) -> None:
        self.call(self._name, self._model_infer, next(self._requests), inputs.check_grpc_answer)

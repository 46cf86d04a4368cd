"""Triton's statistics extension over HTTP and gRPC.

HTTP: GET /v2/models/stats, /v2/models/{m}/stats, /v2/models/{m}/versions/{v}/stats.
gRPC: inference.GRPCInferenceService/ModelStatistics.

Both read the ModelStats counters each loaded version keeps (runtime.model.ModelStats, Triton's
field meanings), so the answer is the same over either transport and matches /metrics' counts of
rows and executions. Only loaded versions are listed, as Triton does.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.engine import Engine
from runtime.errors import ModelNotFound, Unavailable
from runtime.model import Duration, ServedModel
from runtime.server import grpc as grpc_server
from runtime.server._pb import grpc_service_pb2 as pb
from runtime.server.http import answers_errors, json_response

_NO_TIME = Duration()


def select(engine: Engine, name: str = "", version: str = "") -> list[ServedModel]:
    """The loaded versions a statistics request names: all models, one model's versions, or one version."""
    registry = engine.registry
    if not name:
        return [
            record.served
            for entry in registry.entries()
            for _, record in sorted(entry.serving.items())
            if record.served is not None
        ]
    if version:
        record = registry.record(name, version)  # ModelNotFound for unknown models, versions and labels
        if record.served is None:
            raise Unavailable(
                f"model {name!r} version {version} is not loaded ({record.reason or record.state.value})"
            )
        return [record.served]
    entry = registry.entry(name)
    if entry is None:
        raise ModelNotFound(f"unknown model {name!r}")
    loaded = [record.served for _, record in sorted(entry.serving.items()) if record.served is not None]
    if not loaded:
        raise Unavailable(f"model {name!r} has no loaded version")
    return loaded


# ---- JSON ---------------------------------------------------------------------------------------


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def model_stats_json(served: ServedModel) -> dict[str, Any]:
    stats = served.stats
    return {
        "name": served.name,
        "version": str(served.version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            "compute_input": _duration(stats.compute_input),
            "compute_infer": _duration(stats.compute_infer),
            "compute_output": _duration(stats.compute_output),
            "cache_hit": _duration(_NO_TIME),
            "cache_miss": _duration(_NO_TIME),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(per_size[0]),
                "compute_infer": _duration(per_size[1]),
                "compute_output": _duration(per_size[2]),
            }
            for size, per_size in sorted(stats.batch_stats.items())
        ],
        "memory_usage": [],
    }


def http_routes(engine: Engine) -> list[Route]:
    @answers_errors
    async def statistics(request: Request) -> Response:
        params = request.path_params
        served = select(engine, params.get("model", ""), params.get("version", ""))
        return json_response({"model_stats": [model_stats_json(s) for s in served]})

    return [
        Route("/v2/models/stats", statistics, methods=["GET"]),
        Route("/v2/models/{model}/stats", statistics, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/stats", statistics, methods=["GET"]),
    ]


# ---- gRPC ---------------------------------------------------------------------------------------


def _duration_pb(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def model_stats_pb(served: ServedModel) -> pb.ModelStatistics:
    stats = served.stats
    return pb.ModelStatistics(
        name=served.name,
        version=str(served.version),
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration_pb(stats.success),
            fail=_duration_pb(stats.fail),
            queue=_duration_pb(stats.queue),
            compute_input=_duration_pb(stats.compute_input),
            compute_infer=_duration_pb(stats.compute_infer),
            compute_output=_duration_pb(stats.compute_output),
            cache_hit=_duration_pb(_NO_TIME),
            cache_miss=_duration_pb(_NO_TIME),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration_pb(per_size[0]),
                compute_infer=_duration_pb(per_size[1]),
                compute_output=_duration_pb(per_size[2]),
            )
            for size, per_size in sorted(stats.batch_stats.items())
        ],
    )


class StatisticsService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @grpc_server.answers_errors
    async def ModelStatistics(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = grpc_server.parse(pb.ModelStatisticsRequest, raw)
        served = select(self.engine, request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[model_stats_pb(s) for s in served])


def grpc_handler(engine: Engine) -> grpc.GenericRpcHandler:
    return grpc_server.generic_handler(
        grpc_server.unary_handlers(StatisticsService(engine), ["ModelStatistics"])
    )

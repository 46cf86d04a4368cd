"""Triton's statistics extension over HTTP and gRPC.

HTTP: GET /v2/models/stats, /v2/models/{m}/stats, /v2/models/{m}/versions/{v}/stats.
gRPC: inference.GRPCInferenceService/ModelStatistics.

Both write what engine.statistics() answers (runtime/statistics.py: the ModelStats counters each loaded
version keeps, Triton's field meanings), so the answer is the same over either transport and matches
/metrics' counts of rows and executions.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runtime.engine import EngineApi
from runtime._pb import grpc_service_pb2 as pb
from runtime.server.grpc.converters import parse
from runtime.server.grpc.service import answers_errors as grpc_answers_errors
from runtime.server.grpc.service import generic_handler, unary_handlers
from runtime.server.http.responses import answers_errors, json_response
from runtime.statistics import Duration, ModelStatistics

# ---- JSON ---------------------------------------------------------------------------------------


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def model_stats_json(stats: ModelStatistics) -> dict[str, Any]:
    return {
        "name": stats.name,
        "version": stats.version,
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
            "cache_hit": _duration(stats.cache_hit),
            "cache_miss": _duration(stats.cache_miss),
        },
        "batch_stats": [
            {
                "batch_size": batch.batch_size,
                "compute_input": _duration(batch.compute_input),
                "compute_infer": _duration(batch.compute_infer),
                "compute_output": _duration(batch.compute_output),
            }
            for batch in stats.batch_stats
        ],
        "memory_usage": [],
    }


def http_routes(engine: EngineApi) -> list[Route]:
    @answers_errors
    async def statistics(request: Request) -> Response:
        params = request.path_params
        selected = await engine.statistics(params.get("model", ""), params.get("version", ""))
        return json_response({"model_stats": [model_stats_json(s) for s in selected]})

    return [
        Route("/v2/models/stats", statistics, methods=["GET"]),
        Route("/v2/models/{model}/stats", statistics, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/stats", statistics, methods=["GET"]),
    ]


# ---- gRPC ---------------------------------------------------------------------------------------


def _duration_pb(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def model_stats_pb(stats: ModelStatistics) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=stats.name,
        version=stats.version,
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
            cache_hit=_duration_pb(stats.cache_hit),
            cache_miss=_duration_pb(stats.cache_miss),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=batch.batch_size,
                compute_input=_duration_pb(batch.compute_input),
                compute_infer=_duration_pb(batch.compute_infer),
                compute_output=_duration_pb(batch.compute_output),
            )
            for batch in stats.batch_stats
        ],
    )


class StatisticsService:
    def __init__(self, engine: EngineApi) -> None:
        self.engine = engine

    @grpc_answers_errors
    async def ModelStatistics(self, raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        request = parse(pb.ModelStatisticsRequest, raw)
        selected = await self.engine.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[model_stats_pb(s) for s in selected])


def grpc_handler(engine: EngineApi) -> grpc.GenericRpcHandler:
    return generic_handler(unary_handlers(StatisticsService(engine), ["ModelStatistics"]))

"""The gRPC endpoint: grpc.aio server, TLS, limits, health service and the graceful stop."""
from __future__ import annotations

import asyncio
import time
from typing import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from runtime.config import Settings
from runtime.engine import EngineApi
from runtime.server.grpc.interceptors import Drain, StreamGuard
from runtime.server.grpc.service import SERVICE, InferenceService, inference_handler

# At the end of the drain: how long the calls just ended get to send their UNAVAILABLE.
STOP_GRACE_S = 0.5


class GrpcServer:
    """The gRPC endpoint: TLS (optionally mutual) when the settings name certificate files, and limits
    (the grpc_* settings) so idle or stalled clients cannot exhaust it.
    """

    def __init__(
        self,
        engine: EngineApi,
        settings: Settings,
        extensions: Sequence[grpc.GenericRpcHandler] = (),
        *,
        reuse_port: bool = False,
    ) -> None:
        limit = settings.max_request_bytes
        credentials = _server_credentials(settings)
        self._guard = StreamGuard(settings.grpc_stream_idle_timeout_secs)
        self._drain = Drain()
        self._server = grpc.aio.server(
            # Drain outermost: it answers a call refused during the drain before anything else runs.
            interceptors=[self._drain, self._guard],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                # On for the --workers front ends, which all bind the same port; off otherwise, so
                # that a second server on a taken port fails instead of sharing it.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                ("grpc.max_concurrent_streams", settings.grpc_max_streams_per_connection),
                # Idle or stalled connections cannot pin resources forever: a connection with no
                # call is closed after 5 minutes, a peer that stops answering pings after 80 s.
                ("grpc.max_connection_idle_ms", 5 * 60 * 1000),
                ("grpc.keepalive_time_ms", 60 * 1000),
                ("grpc.keepalive_timeout_ms", 20 * 1000),
            ],
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        )
        self._server.add_generic_rpc_handlers((inference_handler(InferenceService(engine, read_traceparent=settings.trace_otlp_endpoint is not None)), *extensions))
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        host = settings.grpc_address
        address = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
        self.tls = credentials is not None
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {address}")

    async def start(self) -> None:
        await self._server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def set_not_serving(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE):
            result = self.health.set(service, status)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self, deadline: float) -> bool:
        """Answer new calls UNAVAILABLE, end idle streams, let accepted calls run until `deadline`
        (time.monotonic()), then end those still running with UNAVAILABLE.

        True when every accepted call finished by the deadline. The port stays open, answering
        UNAVAILABLE, until the process exits (app.serve ends it with the OS closing the
        connections): grpc's own server.stop() resets the calls that arrive while it runs, and their
        clients see CANCELLED, which they do not retry.
        """
        self._drain.start()
        self._guard.stop()
        drained = await self._drain.wait(deadline - time.monotonic())
        if not drained:
            self._drain.expire()
            # The expired calls answer at once; this lets their statuses go out.
            await self._drain.wait(STOP_GRACE_S)
        return drained


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if cert is None and key is None and client_ca is None:
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert-file and --tls-key-file (--tls-client-ca-file is optional)")
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca is not None else None,
        require_client_auth=client_ca is not None,
    )

"""POST /v2/models/{m}[/versions/{v}]/infer whatever carries it: the ASGI route (app.py) and the
HTTP/1.1 fast path (fast.py) both answer through `InferCall`."""
from __future__ import annotations

import re

from runtime.config import Settings
from runtime.engine import EngineApi
from runtime.errors import InvalidInput, quoted
from runtime.server.http.codec import decode_infer_request, encode_infer_response, split_body

INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


class InferCall:
    """A read body and the headers that matter in, the encoded answer out (encode_infer_response's)."""

    def __init__(self, engine: EngineApi, settings: Settings) -> None:
        self.engine = engine
        self.limit = settings.max_request_bytes
        self.read_traceparent = settings.trace_otlp_endpoint is not None  # only while tracing is on

    async def __call__(
        self, model: str, version: str, body: bytes, header_length: str | None, traceparent: str
    ) -> tuple[list[bytes], int | None]:
        try:
            doc, binary = split_body(body, header_length)
            infer_request, default_binary = decode_infer_request(doc, binary, model, version)
        except InvalidInput as exc:  # the engine's messages name the model; say it here too
            raise InvalidInput(f"model {quoted(model)}: {exc.message}") from None
        if self.read_traceparent:
            infer_request.trace_parent = traceparent
        response = await self.engine.infer(infer_request)
        try:
            return encode_infer_response(response, default_binary)
        finally:
            response.release()

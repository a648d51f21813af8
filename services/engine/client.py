"""A small typed async client of the engine, for internal gRPC callers (the gateway uses it)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc

# Keep one HTTP/2 connection alive across idle periods so the first request after a pause
# does not pay for a reconnect, and notice a dead peer within seconds.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class EngineClient:
    """Wraps one long-lived channel. Use `async with EngineClient(addr) as engine:` or call `close()`."""

    def __init__(self, address: str, channel: grpc.aio.Channel | None = None) -> None:
        self.address = address
        self._channel = channel or grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = engine_pb2_grpc.EngineServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def generate(
        self, request: pb.GenerateRequest, timeout: float | None = None
    ) -> grpc.aio.UnaryStreamCall[pb.GenerateRequest, pb.GenerateResponse]:
        """The streaming call; iterate it, or `cancel()` it to abort the request in the engine."""
        return self._stub.Generate(request, timeout=timeout)

    async def generate_all(self, request: pb.GenerateRequest, timeout: float | None = None) -> list[pb.GenerateResponse]:
        return [message async for message in self.generate(request, timeout=timeout)]

    async def abort(self, request_ids: Sequence[str], timeout: float | None = 10.0) -> list[str]:
        response = await self._stub.Abort(pb.AbortRequest(request_ids=list(request_ids)), timeout=timeout)
        return list(response.aborted_ids)

    async def tokenize(self, request: pb.TokenizeRequest, timeout: float | None = 10.0) -> pb.TokenizeResponse:
        return await self._stub.Tokenize(request, timeout=timeout)

    async def detokenize(self, model: str, token_ids: Sequence[int], timeout: float | None = 10.0) -> str:
        response = await self._stub.Detokenize(
            pb.DetokenizeRequest(model=model, token_ids=list(token_ids)), timeout=timeout
        )
        return response.text

    async def list_models(self, timeout: float | None = 10.0) -> list[pb.ModelCard]:
        response = await self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout)
        return list(response.models)

    async def load(self, timeout: float | None = 10.0) -> pb.GetLoadResponse:
        return await self._stub.GetLoad(pb.GetLoadRequest(), timeout=timeout)

    async def serving(self, timeout: float | None = 5.0) -> bool:
        """True when the engine's health service says SERVING."""
        try:
            response = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

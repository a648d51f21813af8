"""A small typed async client of the engine, for internal gRPC callers (the gateway uses it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc

from .channel import ServiceChannel
from .generate_call import GenerateCall
from .generate_many import GenerateStreams, MultiplexedCall
from .held_usage import holder_parts


class EngineClient(ServiceChannel):
    def __init__(self, address: str, token: str | None = None, multiplexed: bool = False) -> None:
        """`multiplexed`: every `generate` call rides one GenerateMany stream (fewer, larger messages
        when many streams are open); else each is its own Generate call."""
        super().__init__(address, token)
        self._stub = engine_pb2_grpc.EngineServiceStub(self._channel)
        self._streams = (
            GenerateStreams(lambda: self._stub.GenerateMany(metadata=self.metadata)) if multiplexed else None
        )

    def generate(self, request: pb.GenerateRequest, timeout: float | None = None) -> GenerateCall | MultiplexedCall:
        """The streaming call; iterate it (or `read()` it, or `listen` to it), or `cancel()` it to abort the
        request in the engine."""
        if self._streams is not None:
            return self._streams.open(request, timeout=timeout)
        return GenerateCall(self._stub.Generate(request, timeout=timeout, metadata=self.metadata))

    async def close(self) -> None:
        if self._streams is not None:
            await self._streams.close()
        await super().close()

    async def generate_all(
        self, request: pb.GenerateRequest, timeout: float | None = None
    ) -> list[pb.GenerateResponse]:
        return [message async for message in self.generate(request, timeout=timeout)]

    async def abort(self, request_ids: Sequence[str], timeout: float | None = 10.0) -> list[str]:
        request = pb.AbortRequest(request_ids=list(request_ids))
        response = await self._stub.Abort(request, timeout=timeout, metadata=self.metadata)
        return list(response.aborted_ids)

    async def embed(self, request: pb.EmbedRequest, timeout: float | None = 120.0) -> pb.EmbedResponse:
        return await self._stub.Embed(request, timeout=timeout, metadata=self.metadata)

    async def score(self, request: pb.ScoreRequest, timeout: float | None = 120.0) -> pb.ScoreResponse:
        return await self._stub.Score(request, timeout=timeout, metadata=self.metadata)

    async def tokenize(self, request: pb.TokenizeRequest, timeout: float | None = 10.0) -> pb.TokenizeResponse:
        return await self._stub.Tokenize(request, timeout=timeout, metadata=self.metadata)

    async def detokenize(self, model: str, token_ids: Sequence[int], timeout: float | None = 10.0) -> str:
        response = await self._stub.Detokenize(
            pb.DetokenizeRequest(model=model, token_ids=list(token_ids)), timeout=timeout, metadata=self.metadata
        )
        return response.text

    async def list_models(self, timeout: float | None = 10.0) -> list[pb.ModelCard]:
        response = await self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout, metadata=self.metadata)
        return list(response.models)

    async def load(self, timeout: float | None = 10.0) -> pb.GetLoadResponse:
        return await self._stub.GetLoad(pb.GetLoadRequest(), timeout=timeout, metadata=self.metadata)

    async def confirm_usage(self, request_ids: Sequence[str], timeout: float | None = 10.0, caller: str = "") -> None:
        """`caller` renews its lease on the usage the engine holds for it (with no ids: a heartbeat)."""
        request = pb.ConfirmUsageRequest(request_ids=list(request_ids), caller=caller)
        await self._stub.ConfirmUsage(request, timeout=timeout, metadata=self.metadata)

    async def claim_usage(
        self, source: str, exclude_incarnation: str, timeout: float | None = 10.0, request_ids: Sequence[str] = ()
    ) -> pb.ClaimUsageResponse:
        request = pb.ClaimUsageRequest(
            source=source, exclude_incarnation=exclude_incarnation, request_ids=list(request_ids)
        )
        return await self._stub.ClaimUsage(request, timeout=timeout, metadata=self.metadata)

    async def claim_held(
        self, caller: str, request_ids: Sequence[str], settle_seconds: float
    ) -> list[pb.UnconfirmedUsage]:
        """The final usage this engine holds for `caller`'s requests `request_ids` whose answer never reached
        the caller (the call broke, or was cut): the requests still running are waited for (the engine is
        aborting them), up to `settle_seconds`. Raises AioRpcError when the engine cannot be asked."""
        source, _ = holder_parts(caller)
        deadline = time.monotonic() + settle_seconds
        while True:
            answer = await self.claim_usage(source, "", timeout=settle_seconds, request_ids=request_ids)
            if not answer.still_open or time.monotonic() > deadline:
                return list(answer.usage)
            await asyncio.sleep(0.1)

    async def claim_expired_usage(self, claimer: str, timeout: float | None = 10.0) -> pb.ClaimUsageResponse:
        """The usage held for callers whose lease ran out; it becomes the claimer's."""
        request = pb.ClaimUsageRequest(expired=True, claimer=claimer)
        return await self._stub.ClaimUsage(request, timeout=timeout, metadata=self.metadata)

    async def launch_model(self, request: pb.LaunchModelRequest, timeout: float | None = 900.0) -> pb.ModelCard:
        """Answers once the model serves (tens of seconds on CPU)."""
        response = await self._stub.LaunchModel(request, timeout=timeout, metadata=self.metadata)
        return response.model

    async def load_adapter(self, base_model: str, name: str, path: str, timeout: float | None = 120.0) -> pb.ModelCard:
        request = pb.LoadAdapterRequest(base_model=base_model, name=name, path=path)
        return await self._stub.LoadAdapter(request, timeout=timeout, metadata=self.metadata)

    async def unload_adapter(self, name: str, timeout: float | None = 120.0) -> int:
        request = pb.UnloadAdapterRequest(name=name)
        response = await self._stub.UnloadAdapter(request, timeout=timeout, metadata=self.metadata)
        return response.aborted_requests

    async def terminate_model(self, uid: str, timeout: float | None = 120.0) -> int:
        request = pb.TerminateModelRequest(uid=uid)
        response = await self._stub.TerminateModel(request, timeout=timeout, metadata=self.metadata)
        return response.aborted_streams

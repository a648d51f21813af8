"""A scripted engine for measuring the gateway alone, shaped like a real engine: it runs steps, and each
step makes one token for every open stream (as a GPU's decode step does). A stream that wakes after
several steps gets their tokens in one update (as vLLM's output collector merges them), with cumulative
usage, and a final message, as the real engine sends. Generate and GenerateMany are both served, the
latter by the engine's own batching code.

    python -m benchmarks.scripted_engine --port 50061 [--step-ms 10]

--step-ms 0 runs steps back to back (as fast as this process can); otherwise one step every step-ms, so
N open streams get N / step-ms tokens per ms in all.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2_grpc
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc

from services.engine.generate_many import generate_many

MODEL = "scripted"
PROMPT_TOKENS = 16


class Steps:
    """The step counter; runs only while streams are open."""

    def __init__(self, step_seconds: float) -> None:
        self._seconds = step_seconds
        self.count = 0
        self.open = 0
        self._stepped = asyncio.Event()
        self._streams_open = asyncio.Event()

    async def run(self) -> None:
        while True:
            await self._streams_open.wait()
            await asyncio.sleep(self._seconds)
            self.count += 1
            stepped, self._stepped = self._stepped, asyncio.Event()
            stepped.set()

    async def after(self, seen: int) -> int:
        while self.count == seen:
            await self._stepped.wait()
        return self.count

    def opened(self) -> None:
        self.open += 1
        self._streams_open.set()

    def closed(self) -> None:
        self.open -= 1
        if not self.open:
            self._streams_open.clear()


class ScriptedEngine(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, steps: Steps) -> None:
        self._steps = steps

    def _updates(self, request: pb.GenerateRequest) -> tuple[str, AsyncIterator[pb.GenerateResponse]]:
        return request.request_id, self._stream(request)

    async def _stream(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse]:
        tokens = request.sampling.max_tokens or 16
        rid = request.request_id
        produced = 0
        self._steps.opened()
        try:
            seen = self._steps.count
            while produced < tokens:
                now = await self._steps.after(seen)
                new = min(now - seen, tokens - produced)
                seen = now
                ids = [100 + (produced + i) % 50 for i in range(new)]
                produced += new
                yield pb.GenerateResponse(
                    request_id=rid,
                    model=MODEL if produced == new else "",
                    choices=[pb.ChoiceDelta(index=0, text=" tok" * new, token_ids=ids)],
                    usage=pb.Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=produced),
                )
        finally:
            self._steps.closed()
        yield pb.GenerateResponse(
            request_id=rid,
            model=MODEL,
            choices=[pb.ChoiceDelta(index=0, finish_reason=pb.FINISH_REASON_LENGTH)],
            usage=pb.Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=tokens),
            finished=True,
        )

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        async for message in self._stream(request):
            yield message

    async def GenerateMany(self, requests, context: grpc.aio.ServicerContext):  # noqa: N802
        async for batch in generate_many(self._updates, _copy, {}, requests):
            yield batch

    async def ListModels(self, request, context):  # noqa: N802
        return pb.ListModelsResponse(models=[pb.ModelCard(id=MODEL, max_model_len=4096)])

    async def GetLoad(self, request, context):  # noqa: N802
        return pb.GetLoadResponse()


def _copy(out: pb.GenerateResponse, request_id: str, message: pb.GenerateResponse) -> pb.GenerateResponse:
    out.CopyFrom(message)
    return out


async def serve(port: int, step_seconds: float) -> None:
    steps = Steps(step_seconds)
    stepping = asyncio.create_task(steps.run())
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServiceServicer_to_server(ScriptedEngine(steps), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        stepping.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--step-ms", type=float, default=0.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.step_ms / 1000))


if __name__ == "__main__":
    main()

"""A scripted engine for measuring the gateway alone: Generate streams `max_tokens` one-token messages
as fast as gRPC takes them, with cumulative usage and a final message, as the real engine does.

    python -m benchmarks.scripted_engine --port 50061
"""

from __future__ import annotations

import argparse

import grpc
import uvloop
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1 import health
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc

MODEL = "scripted"
PROMPT_TOKENS = 16


class ScriptedEngine(engine_pb2_grpc.EngineServiceServicer):
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        tokens = request.sampling.max_tokens or 16
        for i in range(tokens):
            yield pb.GenerateResponse(
                request_id=request.request_id,
                choices=[pb.ChoiceDelta(index=0, text=" tok", token_ids=[100 + i % 50])],
                usage=pb.Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=i + 1),
            )
        yield pb.GenerateResponse(
            request_id=request.request_id,
            choices=[pb.ChoiceDelta(index=0, finish_reason=pb.FINISH_REASON_LENGTH)],
            usage=pb.Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=tokens),
            finished=True,
        )

    async def ListModels(self, request, context):  # noqa: N802
        return pb.ListModelsResponse(models=[pb.ModelCard(id=MODEL, max_model_len=4096)])


async def serve(port: int) -> None:
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServiceServicer_to_server(ScriptedEngine(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()

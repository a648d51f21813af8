"""Embeddings in OpenAI's shape: one vector per input from an engine model that runs vLLM's pooling runner,
with exact prompt-token usage recorded like any request's (zero completion tokens)."""

from __future__ import annotations

import base64
from array import array
from collections.abc import Sequence

from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.errors import ApiError
from services.gateway.fleet.engines import EngineFleet
from services.gateway.limits.admission import embedding_tokens
from services.gateway.openai_api.embeddings.protocol import EmbeddingRequest
from services.gateway.openai_api.pooling import PoolingCall
from services.gateway.outcome import Outcome


def _encode(values: Sequence[float], encoding: str) -> list[float] | str:
    """float: the numbers; base64: little-endian float32 bytes, as OpenAI sends them."""
    if encoding == "float":
        return list(values)
    return base64.b64encode(array("f", values).tobytes()).decode()


def engine_request(body: EmbeddingRequest, request_id: str, limit: int) -> pb.EmbedRequest:
    try:
        inputs = body.inputs()
    except ValueError as error:
        raise ApiError(400, str(error), param="input") from error
    if len(inputs) > limit:
        raise ApiError(400, f"At most {limit} inputs per request; got {len(inputs)}.", param="input")
    request = pb.EmbedRequest(
        request_id=request_id,
        model=body.model,
        inputs=[
            pb.EmbedInput(text=x) if isinstance(x, str) else pb.EmbedInput(token_ids=pb.TokenIds(ids=x)) for x in inputs
        ],
    )
    if body.dimensions is not None:
        request.dimensions = body.dimensions
    return request


async def embed(
    call: PoolingCall, fleet: EngineFleet, body: EmbeddingRequest, request: pb.EmbedRequest, outcome: Outcome
) -> tuple[dict, dict]:
    """(OpenAI's response body, headers); the usage is recorded before it returns."""
    headers = await call.reserve(outcome, embedding_tokens(fleet, request), len(request.inputs))
    reply = await call.run(body.model, request, outcome, lambda member: member.client.embed(request))
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(e.values, body.encoding_format)}
        for i, e in enumerate(reply.embeddings)
    ]
    usage = {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens}
    return {"object": "list", "data": data, "model": outcome.model, "usage": usage}, headers

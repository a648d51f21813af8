"""Rerank and score on an engine's pooling runner: the request's exact prompt tokens counted by the engine
(nothing runs) and reserved when its key has limits, then scored, its usage recorded before the answer
leaves, and the answer shaped as vLLM shapes it."""

from __future__ import annotations

import time
import uuid

import grpc
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.errors import ApiError, from_grpc
from services.gateway.fleet.engines import EngineFleet
from services.gateway.openai_api.pooling import PoolingCall
from services.gateway.outcome import Outcome
from services.gateway.scoring_api.protocol import RerankBody, ScoringBody


def score_request(
    body: ScoringBody, request_id: str, queries: list[str], documents: list[str], fleet: EngineFleet, limit: int
) -> pb.ScoreRequest:
    if len(documents) > limit:
        raise ApiError(400, f"At most {limit} documents per request; got {len(documents)}.", param="documents")
    request = pb.ScoreRequest(request_id=request_id, model=body.model, queries=queries, documents=documents)
    if body.truncate_prompt_tokens is not None:
        card = fleet.card(body.model)
        whole = card.max_model_len if card is not None else 0
        request.truncate_prompt_tokens = whole if body.truncate_prompt_tokens == -1 else body.truncate_prompt_tokens
    return request


async def run_scoring(
    call: PoolingCall, fleet: EngineFleet, request: pb.ScoreRequest, outcome: Outcome
) -> tuple[list[float], dict[str, str]]:
    """(one score per document, rate-limit headers); the usage is recorded before it returns."""
    headers: dict[str, str] = {}
    if call.limited(outcome):
        count = pb.ScoreRequest()
        count.CopyFrom(request)
        count.count_only = True
        try:
            counted = await fleet.peek(request.model).client.score(count)
        except grpc.aio.AioRpcError as error:
            raise from_grpc(error) from error
        headers = await call.reserve(outcome, counted.usage.prompt_tokens)
    reply = await call.run(request.model, request, outcome, lambda member: member.client.score(request))
    return list(reply.scores), headers


def rerank_answer(body: RerankBody, documents: list[str], scores: list[float], outcome: Outcome) -> dict:
    """vLLM's rerank response (Jina's and Cohere's shape), best first; Xinference's `meta` beside it."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    if body.top_n:
        order = order[: body.top_n]
    show = body.return_documents is not False
    results = [
        {"index": i, "relevance_score": scores[i], **({"document": {"text": documents[i]}} if show else {})}
        for i in order
    ]
    tokens = {"input_tokens": outcome.prompt_tokens, "output_tokens": 0} if body.return_len else None
    return {
        "id": outcome.request_id,
        "model": outcome.model,
        "usage": {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens},
        "results": results,
        "meta": {"api_version": None, "billed_units": None, "tokens": tokens, "warnings": None},
    }


def score_answer(scores: list[float], outcome: Outcome) -> dict:
    """vLLM's /v1/score response: one score per pair, in the pairs' order."""
    return {
        "id": outcome.request_id,
        "object": "list",
        "created": int(time.time()),
        "model": outcome.model,
        "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
        "usage": {
            "prompt_tokens": outcome.prompt_tokens,
            "total_tokens": outcome.prompt_tokens,
            "completion_tokens": 0,
        },
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"

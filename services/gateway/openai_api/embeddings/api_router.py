"""POST /v1/embeddings."""

from __future__ import annotations

import uuid

import orjson
from fastapi import APIRouter, Request, Response

from services.gateway.dependencies import (
    Access,
    Fleet,
    Generations,
    KeyId,
    KeyLimits,
    Metrics,
    Record,
    Router,
    Settings,
)
from services.gateway.middleware import ENGINE_WORK
from services.gateway.openai_api.embeddings.protocol import EmbeddingRequest
from services.gateway.openai_api.embeddings.serving import embed, engine_request
from services.gateway.openai_api.pooling import PoolingCall
from services.gateway.outcome import Outcome

router = APIRouter(prefix="/v1", tags=[ENGINE_WORK])


@router.post("/embeddings", response_model=None)
async def create_embeddings(
    body: EmbeddingRequest,
    request: Request,
    requests: Router,
    fleet: Fleet,
    recorder: Record,
    metrics: Metrics,
    settings: Settings,
    generations: Generations,
    limits: KeyLimits,
    access: Access,
    key_id: KeyId,
) -> Response:
    request.state.model = body.model
    access.check_model(key_id, body.model)
    model_name = fleet.model_name(body.model)
    prices = request.app.state.prices
    price = prices.admit(body.model, model_name) if prices is not None else None
    outcome = Outcome(
        request_id=f"embd-{uuid.uuid4().hex}",
        endpoint=request.url.path,
        model=body.model,
        api_key_id=key_id,
        streamed=False,
        model_name=model_name,
    )
    engine_call = engine_request(body, outcome.request_id, settings.max_prompts_per_request)
    outcome.embedding_inputs = len(engine_call.inputs)
    call = PoolingCall(requests, recorder, generations, limits, settings.settle_timeout_seconds, price)
    answer, headers = await embed(call, fleet, body, engine_call, outcome)
    metrics.known_models.add(outcome.model)
    return Response(orjson.dumps(answer), media_type="application/json", headers=headers)

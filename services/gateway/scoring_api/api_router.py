"""POST /v1/rerank (also /v2/rerank, Cohere's v2 path, and /rerank, as vLLM serves them) and POST /v1/score:
engine work (a slot in flight, models, limits, prices, the usage recorder), recorded under the path."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from services.gateway.config import GatewaySettings
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
from services.gateway.errors import ApiError
from services.gateway.fleet.engines import EngineFleet
from services.gateway.fleet.router import RequestRouter
from services.gateway.limits.keeper import LimitsKeeper
from services.gateway.middleware import ENGINE_WORK
from services.gateway.openai_api.pooling import PoolingCall
from services.gateway.outcome import Outcome
from services.gateway.scoring_api.protocol import RerankBody, ScoreBody, ScoringBody
from services.gateway.scoring_api.serving import new_id, rerank_answer, run_scoring, score_answer, score_request
from services.gateway.streaming.open_generations import OpenGenerations
from services.gateway.usage.recorder import OutcomeRecorder

router = APIRouter(tags=[ENGINE_WORK])


def _outcome(request: Request, body: ScoringBody, key_id: str, fleet: EngineFleet, prefix: str) -> Outcome:
    request.state.model = body.model
    return Outcome(
        request_id=new_id(prefix),
        endpoint=request.url.path,
        model=body.model,
        api_key_id=key_id,
        streamed=False,
        model_name=fleet.model_name(body.model),
    )


def _call(
    request: Request,
    body: ScoringBody,
    requests: RequestRouter,
    recorder: OutcomeRecorder,
    generations: OpenGenerations,
    limits: LimitsKeeper | None,
    settings: GatewaySettings,
) -> PoolingCall:
    prices = request.app.state.prices
    price = prices.admit(body.model, requests.fleet.model_name(body.model)) if prices is not None else None
    return PoolingCall(requests, recorder, generations, limits, settings.settle_timeout_seconds, price)


@router.post("/v1/rerank", response_model=None)
@router.post("/v2/rerank", response_model=None)
@router.post("/rerank", response_model=None, include_in_schema=False)
async def rerank(
    body: RerankBody,
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
    access.check_model(key_id, body.model)
    outcome = _outcome(request, body, key_id, fleet, "rerank")
    documents = body.texts()
    if not documents:
        raise ApiError(400, "documents: give at least one document.", param="documents")
    call = _call(request, body, requests, recorder, generations, limits, settings)
    engine_call = score_request(body, outcome.request_id, [body.query], documents, fleet, settings.max_score_documents)
    scores, headers = await run_scoring(call, fleet, engine_call, outcome)
    metrics.known_models.add(outcome.model)
    answer = rerank_answer(body, documents, scores, outcome)
    return Response(orjson.dumps(answer), media_type="application/json", headers=headers)


@router.post("/v1/score", response_model=None)
@router.post("/score", response_model=None, include_in_schema=False)
async def score(
    body: ScoreBody,
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
    access.check_model(key_id, body.model)
    outcome = _outcome(request, body, key_id, fleet, "score")
    try:
        queries, documents = body.pairs()
    except ValueError as error:
        raise ApiError(400, str(error), param="text_1") from error
    call = _call(request, body, requests, recorder, generations, limits, settings)
    engine_call = score_request(body, outcome.request_id, queries, documents, fleet, settings.max_score_documents)
    scores, headers = await run_scoring(call, fleet, engine_call, outcome)
    metrics.known_models.add(outcome.model)
    return Response(orjson.dumps(score_answer(scores, outcome)), media_type="application/json", headers=headers)

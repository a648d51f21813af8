"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from services.gateway.dependencies import KeyId, Limits, Settings
from services.gateway.errors import ApiError
from services.gateway.middleware import ENGINE_WORK
from services.gateway.openai_api.completions.protocol import CompletionRequest
from services.gateway.openai_api.completions.serving import completion_requests
from services.gateway.openai_api.dependencies import Generate

router = APIRouter(prefix="/v1", tags=[ENGINE_WORK])


@router.post("/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, request: Request, responder: Generate, settings: Settings, in_flight: Limits, key_id: KeyId
) -> Response:
    meta = responder.meta("completion", body, body.logprobs is not None)
    try:
        engine_requests = completion_requests(body, meta.id)
    except ValueError as error:
        raise ApiError(400, str(error), param="prompt") from error
    limit = settings.max_prompts_per_request
    if len(engine_requests) > limit:
        raise ApiError(400, f"At most {limit} prompts per request; got {len(engine_requests)}.", param="prompt")
    # Each prompt is its own engine request, and each of its n choices its own sequence: the request's
    # slot holds one, the others take their own.
    sequences = len(engine_requests) * body.n
    if sequences > 1 and not in_flight.take(request.scope, sequences - 1):
        raise in_flight.busy_error()
    return await responder.respond(request, engine_requests, meta, key_id, body, body.max_tokens)

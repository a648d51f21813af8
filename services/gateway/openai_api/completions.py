"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from services.gateway.dependencies import KeyId, State
from services.gateway.errors import ApiError
from services.gateway.openai_api.respond import new_id, respond, response_meta
from services.gateway.openai_api.schemas import CompletionRequest
from services.gateway.openai_api.translate import completion_requests

router = APIRouter(prefix="/v1")


@router.post("/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request, state: State, key_id: KeyId) -> Response:
    response_id = new_id("completion")
    meta = response_meta("completion", response_id, body, body.logprobs is not None, state)
    try:
        engine_requests = completion_requests(body, response_id)
    except ValueError as error:
        raise ApiError(400, str(error), param="prompt") from error
    limit = state.settings.max_prompts_per_request
    if len(engine_requests) > limit:
        raise ApiError(400, f"At most {limit} prompts per request; got {len(engine_requests)}.", param="prompt")
    # Each prompt is its own engine request: the first holds the request's slot, the others take their own.
    if len(engine_requests) > 1 and not state.in_flight.take(request.scope, len(engine_requests) - 1):
        raise state.in_flight.busy_error()
    return await respond(state, request, engine_requests, meta, key_id, body, body.max_tokens)

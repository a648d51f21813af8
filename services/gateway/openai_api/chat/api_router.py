"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from services.gateway.dependencies import KeyId, Limits
from services.gateway.middleware import ENGINE_WORK
from services.gateway.openai_api.chat.protocol import ChatCompletionRequest
from services.gateway.openai_api.chat.serving import serve_chat
from services.gateway.openai_api.dependencies import Generate, Images

router = APIRouter(prefix="/v1", tags=[ENGINE_WORK])


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    responder: Generate,
    image_policy: Images,
    in_flight: Limits,
    key_id: KeyId,
) -> Response:
    meta = responder.meta("chat", body, body.logprobs)
    # Each of n choices is its own sequence in the engine: the request's slot holds one, the others take theirs.
    if body.n > 1 and not in_flight.take(request.scope, body.n - 1):
        raise in_flight.busy_error()
    return await serve_chat(responder, request, body, meta, key_id, image_policy)

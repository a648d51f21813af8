"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from services.gateway.dependencies import KeyId, State
from services.gateway.errors import ApiError
from services.gateway.openai_api.images import load_images
from services.gateway.openai_api.respond import new_id, respond, response_meta
from services.gateway.openai_api.schemas import ChatCompletionRequest
from services.gateway.openai_api.translate import chat_request

router = APIRouter(prefix="/v1")


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, state: State, key_id: KeyId) -> Response:
    response_id = new_id("chat")
    meta = response_meta("chat", response_id, body, body.logprobs, state)
    images = await load_images(body.messages, state.settings.image_policy())
    try:
        engine_request = chat_request(body, response_id, images)
    except ValueError as error:
        raise ApiError(400, str(error), param="response_format") from error
    max_tokens = body.max_completion_tokens or body.max_tokens
    return await respond(state, request, [engine_request], meta, key_id, body, max_tokens)

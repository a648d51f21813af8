"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from services.gateway.dependencies import Generate, Images, KeyId
from services.gateway.errors import ApiError
from services.gateway.openai_api.images import load_images
from services.gateway.openai_api.schemas import ChatCompletionRequest
from services.gateway.openai_api.translate import chat_request

router = APIRouter(prefix="/v1")


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, responder: Generate, image_policy: Images, key_id: KeyId
) -> Response:
    meta = responder.meta("chat", body, body.logprobs)
    images = await load_images(body.messages, image_policy)
    try:
        engine_request = chat_request(body, meta.id, images)
    except ValueError as error:
        raise ApiError(400, str(error), param="response_format") from error
    max_tokens = body.max_completion_tokens or body.max_tokens
    return await responder.respond(request, [engine_request], meta, key_id, body, max_tokens)

"""POST /v1/responses: engine work on the chat path (a slot in flight, models, limits, prices, the usage
recorder), answered in the Responses API's shapes and recorded as /v1/responses."""

from __future__ import annotations

import dataclasses
import uuid

from fastapi import APIRouter, Request, Response

from services.gateway.dependencies import KeyId
from services.gateway.middleware import ENGINE_WORK
from services.gateway.openai_api.chat.serving import serve_chat
from services.gateway.openai_api.dependencies import Generate, Images
from services.gateway.openai_api.respond import Shape
from services.gateway.responses_api.protocol import ResponsesRequest
from services.gateway.responses_api.shape import response_body, response_events
from services.gateway.responses_api.translate import chat_body

router = APIRouter(prefix="/v1", tags=[ENGINE_WORK])
RESPONSES = Shape(response_events, response_body)


@router.post("/responses", response_model=None)
async def create_response(
    body: ResponsesRequest, request: Request, responder: Generate, image_policy: Images, key_id: KeyId
) -> Response:
    chat = chat_body(body)
    meta = dataclasses.replace(responder.meta("chat", chat, False), id=f"resp_{uuid.uuid4().hex}")
    return await serve_chat(responder, request, chat, meta, key_id, image_policy, RESPONSES, "text.format")

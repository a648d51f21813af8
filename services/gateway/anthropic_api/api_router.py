"""POST /v1/messages (engine work: a slot in flight, limits, the usage recorder, as chat) and POST
/v1/messages/count_tokens (the engine's tokenizer on the same rendered prompt)."""

from __future__ import annotations

import dataclasses
import uuid

from fastapi import APIRouter, Request, Response
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.anthropic_api.protocol import CountTokensRequest, MessagesRequest
from services.gateway.anthropic_api.shape import message_body, message_events
from services.gateway.anthropic_api.translate import chat_body, chat_messages, chat_tools
from services.gateway.dependencies import Access, KeyId, Router
from services.gateway.fleet.engines import EngineMember
from services.gateway.middleware import ENGINE_WORK
from services.gateway.openai_api import translate
from services.gateway.openai_api.chat.serving import serve_chat
from services.gateway.openai_api.dependencies import Generate, Images
from services.gateway.openai_api.images import load_images
from services.gateway.openai_api.respond import Shape

router = APIRouter(prefix="/v1", tags=[ENGINE_WORK])
counting = APIRouter(prefix="/v1")
ANTHROPIC = Shape(message_events, message_body)


@router.post("/messages", response_model=None)
async def create_message(
    body: MessagesRequest, request: Request, responder: Generate, image_policy: Images, key_id: KeyId
) -> Response:
    chat = chat_body(body)
    meta = dataclasses.replace(responder.meta("chat", chat, False), id=f"msg_{uuid.uuid4().hex}")
    return await serve_chat(responder, request, chat, meta, key_id, image_policy, ANTHROPIC)


@counting.post("/messages/count_tokens")
async def count_tokens(
    body: CountTokensRequest, router: Router, image_policy: Images, access: Access, key_id: KeyId
) -> dict:
    access.check_model(key_id, body.model)
    messages = chat_messages(body)
    tools, _, _ = chat_tools(body)
    request = pb.TokenizeRequest(model=body.model, add_generation_prompt=True)
    request.chat.CopyFrom(translate.chat_messages(messages, await load_images(messages, image_policy)))
    translate.add_tools(request.chat, tools)

    async def rpc(member: EngineMember) -> pb.TokenizeResponse:
        return await member.client.tokenize(request)

    return {"input_tokens": (await router.call(body.model, rpc)).count}

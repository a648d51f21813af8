"""POST /tokenize and /detokenize, in vLLM's shapes."""

from __future__ import annotations

import grpc
from fastapi import APIRouter
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.dependencies import Fleet, Images, KeyId
from services.gateway.errors import from_grpc
from services.gateway.openai_api.images import load_images
from services.gateway.openai_api.schemas import DetokenizeRequest, TokenizeRequest
from services.gateway.openai_api.translate import add_tools, chat_messages

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, fleet: Fleet, image_policy: Images, key_id: KeyId) -> dict:
    request = pb.TokenizeRequest(model=body.model or "")
    if body.messages is not None:
        images = await load_images(body.messages, image_policy)
        request.chat.CopyFrom(chat_messages(body.messages, images))
        add_tools(request.chat, body.tools)
        request.add_generation_prompt = body.add_generation_prompt
    else:
        request.text = body.prompt or ""
        request.add_special_tokens = body.add_special_tokens
    try:
        reply = await fleet.pick(request.model).client.tokenize(request)
    except grpc.aio.AioRpcError as error:
        raise from_grpc(error) from error
    return {"count": reply.count, "max_model_len": reply.max_model_len, "tokens": list(reply.token_ids), "token_strs": None}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, fleet: Fleet, key_id: KeyId) -> dict:
    try:
        text = await fleet.pick(body.model or "").client.detokenize(body.model or "", body.tokens)
    except grpc.aio.AioRpcError as error:
        raise from_grpc(error) from error
    return {"prompt": text}

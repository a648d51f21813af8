"""Tokenize and detokenize on an engine that serves the model, through the router."""

from __future__ import annotations

from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.fleet.engines import EngineMember
from services.gateway.fleet.router import RequestRouter
from services.gateway.openai_api.images import ImagePolicy, load_images
from services.gateway.openai_api.tokenize.protocol import DetokenizeRequest, TokenizeRequest
from services.gateway.openai_api.translate import add_tools, chat_messages


async def tokenize(body: TokenizeRequest, router: RequestRouter, image_policy: ImagePolicy) -> dict:
    request = pb.TokenizeRequest(model=body.model or "")
    if body.messages is not None:
        images = await load_images(body.messages, image_policy)
        request.chat.CopyFrom(chat_messages(body.messages, images))
        add_tools(request.chat, body.tools)
        request.add_generation_prompt = body.add_generation_prompt
    else:
        request.text = body.prompt or ""
        request.add_special_tokens = body.add_special_tokens

    async def rpc(member: EngineMember) -> pb.TokenizeResponse:
        return await member.client.tokenize(request)

    reply = await router.call(request.model, rpc)
    return {
        "count": reply.count,
        "max_model_len": reply.max_model_len,
        "tokens": list(reply.token_ids),
        "token_strs": None,
    }


async def detokenize(body: DetokenizeRequest, router: RequestRouter) -> dict:
    model = body.model or ""

    async def rpc(member: EngineMember) -> str:
        return await member.client.detokenize(model, body.tokens)

    return {"prompt": await router.call(model, rpc)}

"""A chat completions body -> the engine's GenerateRequest, and serving one (the chat path that chat, Responses
and Messages share: images loaded under the image policy, the request answered in the API's shape)."""

from __future__ import annotations

from fastapi import Request, Response
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.errors import ApiError
from services.gateway.openai_api.chat.protocol import ChatCompletionRequest
from services.gateway.openai_api.images import ImagePolicy, load_images
from services.gateway.openai_api.respond import OPENAI, Responder, Shape
from services.gateway.openai_api.translate import add_tools, chat_messages, sampling_params
from services.gateway.streaming.sse import ResponseMeta


def chat_request(
    body: ChatCompletionRequest, request_id: str, images: dict[tuple[int, int], pb.Image] | None = None
) -> pb.GenerateRequest:
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    chat = chat_messages(body.messages, images)
    add_tools(chat, body.tools, body.tool_choice, body.parallel_tool_calls)
    return pb.GenerateRequest(
        request_id=request_id,
        model=body.model,
        chat=chat,
        sampling=sampling_params(body, body.max_completion_tokens or body.max_tokens, logprobs, body.response_format),
    )


async def serve_chat(
    responder: Responder,
    http_request: Request,
    body: ChatCompletionRequest,
    meta: ResponseMeta,
    key_id: str,
    image_policy: ImagePolicy,
    shape: Shape = OPENAI,
    format_param: str = "response_format",
) -> Response:
    images = await load_images(body.messages, image_policy)
    try:
        engine_request = chat_request(body, meta.id, images)
    except ValueError as error:
        raise ApiError(400, str(error), param=format_param) from error
    max_tokens = body.max_completion_tokens or body.max_tokens
    return await responder.respond(http_request, [engine_request], meta, key_id, body, max_tokens, len(images), shape)

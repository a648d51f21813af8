"""A chat completions body -> the engine's GenerateRequest."""

from __future__ import annotations

from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.openai_api.chat.protocol import ChatCompletionRequest
from services.gateway.openai_api.translate import add_tools, chat_messages, sampling_params


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

"""The body of POST /v1/chat/completions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.gateway.openai_api.protocol import (
    MAX_MESSAGES,
    UINT32_MAX,
    ChatMessage,
    ChatTool,
    NamedToolChoice,
    ResponseFormat,
    SamplingFields,
)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=UINT32_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

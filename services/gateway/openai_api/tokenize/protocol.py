"""The bodies of POST /tokenize and /detokenize, in vLLM's shapes."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.gateway.openai_api.protocol import MAX_MESSAGES, ChatMessage, ChatTool, Strict, TokenId


class TokenizeRequest(Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, max_length=MAX_MESSAGES)
    tools: list[ChatTool] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[TokenId]

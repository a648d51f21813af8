"""The bodies of POST /v1/messages and /v1/messages/count_tokens, in Anthropic's shapes. Unknown fields are
refused by name, as on the OpenAI endpoints; `metadata` and `anthropic-version` are accepted and not used.
Refused with a 400 rather than ignored: extended thinking, server tools, cache_control's promises (a cache
hit is reported as `cache_read_input_tokens` whatever the request says), documents and citations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from services.gateway.openai_api.protocol import MAX_MESSAGES, UINT32_MAX, Strict


class ImageSource(Strict):
    type: Literal["base64", "url"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"] | None = None
    data: str | None = None
    url: str | None = None


class TextBlock(Strict):
    type: Literal["text"]
    text: str
    # Accepted for SDK compatibility: prefix caching is automatic (vLLM's), not asked for per block.
    cache_control: dict[str, Any] | None = None


class ImageBlock(Strict):
    type: Literal["image"]
    source: ImageSource
    cache_control: dict[str, Any] | None = None


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=64)
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[TextBlock] = ""
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock


class InputMessage(Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block] = Field(min_length=1)


class Tool(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoice(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class CountTokensRequest(Strict):
    model: str
    messages: list[InputMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    # Required, as Anthropic requires it.
    max_tokens: int = Field(ge=1, le=UINT32_MAX)
    stop_sequences: list[str] | None = Field(None, max_length=16)
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1, lt=2**31)
    metadata: dict[str, Any] | None = None

"""A Messages body -> the chat request the engine path already serves: the system prompt as a system
message, text and image blocks as content parts, an assistant's tool_use blocks as its tool calls, and
each tool_result as a tool message (refused when no tool_use of the assistant message before it has its
id, as Anthropic refuses it); tools and tool_choice as OpenAI's."""

from __future__ import annotations

import json

from services.gateway.anthropic_api.protocol import (
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from services.gateway.errors import ApiError
from services.gateway.openai_api.chat.protocol import ChatCompletionRequest
from services.gateway.openai_api.protocol import (
    AssistantToolCall,
    CalledFunction,
    ChatMessage,
    ChatTool,
    ContentPart,
    FunctionDefinition,
    ImagePart,
    ImageUrl,
    NamedFunction,
    NamedToolChoice,
    TextPart,
)

_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def _text(blocks: str | list[TextBlock]) -> str:
    return blocks if isinstance(blocks, str) else "".join(b.text for b in blocks)


def _image_url(block: ImageBlock, where: str) -> str:
    source = block.source
    if source.type == "url":
        if not source.url:
            raise ApiError(400, f"{where}.source.url: required for a url source", param=f"{where}.source")
        return source.url
    if not (source.data and source.media_type):
        raise ApiError(400, f"{where}.source: a base64 source needs media_type and data", param=f"{where}.source")
    return f"data:{source.media_type};base64,{source.data}"


def chat_messages(body: CountTokensRequest) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    if body.system:
        messages.append(ChatMessage(role="system", content=_text(body.system)))
    calls: set[str] = set()
    for i, message in enumerate(body.messages):
        blocks = [TextBlock(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        where = f"messages.{i}.content"
        if message.role == "assistant":
            text, tool_calls = [], []
            for j, block in enumerate(blocks):
                if isinstance(block, TextBlock):
                    text.append(block.text)
                elif isinstance(block, ToolUseBlock):
                    function = CalledFunction(name=block.name, arguments=json.dumps(block.input))
                    tool_calls.append(AssistantToolCall(id=block.id, function=function))
                else:
                    raise ApiError(
                        400, f"{where}.{j}: an assistant message holds text and tool_use blocks", param=where
                    )
            calls = {c.id for c in tool_calls}
            messages.append(ChatMessage(role="assistant", content="".join(text) or None, tool_calls=tool_calls or None))
            continue
        parts: list[ContentPart] = []
        for j, block in enumerate(blocks):
            if isinstance(block, ToolResultBlock):
                if block.tool_use_id not in calls:
                    raise ApiError(
                        400,
                        f"{where}.{j}: tool_result's tool_use_id {block.tool_use_id!r} matches no tool_use block"
                        " of the assistant message before it",
                        param=where,
                    )
                messages.append(ChatMessage(role="tool", tool_call_id=block.tool_use_id, content=_text(block.content)))
            elif isinstance(block, TextBlock):
                parts.append(TextPart(type="text", text=block.text))
            elif isinstance(block, ImageBlock):
                parts.append(ImagePart(type="image_url", image_url=ImageUrl(url=_image_url(block, f"{where}.{j}"))))
            else:
                raise ApiError(400, f"{where}.{j}: tool_use blocks belong in an assistant message", param=where)
        calls = set()
        if parts:
            only_text = all(isinstance(p, TextPart) for p in parts)
            content = "".join(p.text for p in parts if isinstance(p, TextPart)) if only_text else parts
            messages.append(ChatMessage(role="user", content=content))
    return messages


def chat_tools(body: CountTokensRequest) -> tuple[list[ChatTool] | None, object, bool | None]:
    """(tools, tool_choice, parallel_tool_calls) as OpenAI's."""
    tools = None
    if body.tools:
        tools = [
            ChatTool(
                type="function",
                function=FunctionDefinition(name=t.name, description=t.description, parameters=t.input_schema),
            )
            for t in body.tools
        ]
    choice = body.tool_choice
    if choice is None:
        return tools, None, None
    parallel = None if choice.disable_parallel_tool_use is None else not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if not choice.name:
            raise ApiError(400, "tool_choice.name: required when type is tool", param="tool_choice")
        return tools, NamedToolChoice(type="function", function=NamedFunction(name=choice.name)), parallel
    return tools, _CHOICES[choice.type], parallel


def chat_body(body: MessagesRequest) -> ChatCompletionRequest:
    tools, tool_choice, parallel = chat_tools(body)
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=chat_messages(body),
            max_tokens=body.max_tokens,
            stop=body.stop_sequences,
            stream=body.stream,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel,
        )
    except ValueError as error:
        raise ApiError(400, str(error)) from error

"""A Responses body -> the chat request the engine path already serves: instructions as the system
message, input messages with text and image parts, function_call items as an assistant's tool calls and
function_call_output items as tool messages (refused without the call, as OpenAI refuses it), tools,
tool_choice and text.format as chat's."""

from __future__ import annotations

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
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    TextPart,
)
from services.gateway.responses_api.protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    MessageItem,
    ResponsesRequest,
)

_NOT_STORED = (
    "Responses are not stored by this server (its gateways keep no state between requests): send store: false"
    " (or leave it out) and give the conversation as input items."
)


def _refuse_state(body: ResponsesRequest) -> None:
    for name, given in (("store", body.store), ("previous_response_id", body.previous_response_id)):
        if given:
            raise ApiError(400, f"{name}: {_NOT_STORED}", param=name, code="unsupported_parameter")
    if body.background:
        raise ApiError(400, "background: responses run in the foreground only.", param="background")


def _message(item: MessageItem) -> ChatMessage:
    if isinstance(item.content, str):
        return ChatMessage(role=item.role, content=item.content)
    parts: list[ContentPart] = []
    for part in item.content:
        if isinstance(part, InputImage):
            parts.append(ImagePart(type="image_url", image_url=ImageUrl(url=part.image_url, detail=part.detail)))
        else:
            parts.append(TextPart(type="text", text=part.text))
    if item.role != "user" or all(isinstance(p, TextPart) for p in parts):
        return ChatMessage(role=item.role, content="".join(p.text for p in parts if isinstance(p, TextPart)))
    return ChatMessage(role=item.role, content=parts)


def chat_messages(body: ResponsesRequest) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    if body.instructions:
        messages.append(ChatMessage(role="system", content=body.instructions))
    if isinstance(body.input, str):
        return [*messages, ChatMessage(role="user", content=body.input)]
    calls: set[str] = set()
    for i, item in enumerate(body.input):
        if isinstance(item, FunctionCallItem):
            call = AssistantToolCall(id=item.call_id, function=CalledFunction(name=item.name, arguments=item.arguments))
            calls.add(item.call_id)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_calls:
                last.tool_calls.append(call)
            else:
                messages.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            if item.call_id not in calls:
                raise ApiError(
                    400,
                    f"input.{i}: no function_call item before it has call_id {item.call_id!r}",
                    param=f"input.{i}.call_id",
                )
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=item.output))
        else:
            messages.append(_message(item))
    return messages


def _format(body: ResponsesRequest) -> ResponseFormat | None:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat(type="json_object")
    if not fmt.name:
        raise ApiError(400, "text.format.name: required for json_schema", param="text.format.name")
    schema = JsonSchemaFormat(name=fmt.name, description=fmt.description, schema=fmt.schema_, strict=fmt.strict)
    return ResponseFormat(type="json_schema", json_schema=schema)


def chat_body(body: ResponsesRequest) -> ChatCompletionRequest:
    _refuse_state(body)
    tools = None
    if body.tools:
        tools = [
            ChatTool(
                type="function",
                function=FunctionDefinition(
                    name=t.name, description=t.description, parameters=t.parameters, strict=t.strict
                ),
            )
            for t in body.tools
        ]
    choice = body.tool_choice
    if choice is not None and not isinstance(choice, str):
        choice = NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
    try:
        return ChatCompletionRequest(
            model=body.model,
            messages=chat_messages(body),
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stream=body.stream,
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=body.parallel_tool_calls,
            response_format=_format(body),
            user=body.user,
        )
    except ValueError as error:
        raise ApiError(400, str(error)) from error

"""What every OpenAI body shares, as the engine's types: messages, tools, sampling and structured output."""

from __future__ import annotations

import json

from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.openai_api.protocol import (
    ChatMessage,
    ChatTool,
    NamedToolChoice,
    ResponseFormat,
    SamplingFields,
    TextPart,
)

_ROLES = {
    "system": pb.ROLE_SYSTEM,
    "developer": pb.ROLE_SYSTEM,
    "user": pb.ROLE_USER,
    "assistant": pb.ROLE_ASSISTANT,
    "tool": pb.ROLE_TOOL,
}


_TOOL_CHOICES = {
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}


def chat_messages(messages: list[ChatMessage], images: dict[tuple[int, int], pb.Image] | None = None) -> pb.Chat:
    """`images`: the image parts' bytes by (message, part) index (services.gateway.openai_api.images)."""
    chat = pb.Chat()
    for i, m in enumerate(messages):
        message = chat.messages.add(
            role=_ROLES[m.role], content=m.text(), name=m.name or "", tool_call_id=m.tool_call_id or ""
        )
        for call in m.tool_calls or ():
            message.tool_calls.add(id=call.id, name=call.function.name, arguments=call.function.arguments)
        if m.has_images:
            for j, part in enumerate(m.content):
                if isinstance(part, TextPart):
                    message.parts.add(text=part.text)
                else:
                    message.parts.add(image=(images or {})[(i, j)])
    return chat


def add_tools(
    chat: pb.Chat,
    tools: list[ChatTool] | None,
    choice: str | NamedToolChoice | None = None,
    parallel_tool_calls: bool | None = None,
) -> None:
    """The engine checks what depends on the model (the tool-call parser, the schemas)."""
    for tool in tools or ():
        function = tool.function
        added = chat.tools.add(
            name=function.name,
            description=function.description or "",
            parameters_json=json.dumps(function.parameters) if function.parameters is not None else "",
        )
        if function.strict is not None:
            added.strict = function.strict
    if isinstance(choice, str):
        chat.tool_choice.mode = _TOOL_CHOICES[choice]
    elif choice is not None:
        chat.tool_choice.mode = pb.TOOL_CHOICE_MODE_FUNCTION
        chat.tool_choice.function_name = choice.function.name
    if parallel_tool_calls is not None:
        chat.parallel_tool_calls = parallel_tool_calls


def _structured(response_format: ResponseFormat | None) -> pb.StructuredOutput | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return pb.StructuredOutput(json_object=True)
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise ValueError("response_format.json_schema.schema is required for type json_schema")
    return pb.StructuredOutput(json_schema=json.dumps(spec.schema_))


def sampling_params(
    body: SamplingFields, max_tokens: int | None, logprobs: int | None, fmt: ResponseFormat | None
) -> pb.SamplingParams:
    params = pb.SamplingParams(
        n=body.n,
        stop=body.stop_list(),
        stop_token_ids=body.stop_token_ids or [],
        min_tokens=body.min_tokens,
        ignore_eos=body.ignore_eos,
    )
    optional = {
        "max_tokens": max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "seed": body.seed,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "repetition_penalty": body.repetition_penalty,
        "logprobs": logprobs,
    }
    for name, value in optional.items():
        if value is not None:
            setattr(params, name, value)
    structured = _structured(fmt)
    if structured is not None:
        params.structured_output.CopyFrom(structured)
    return params

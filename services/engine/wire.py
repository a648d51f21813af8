"""The engine's protobuf messages <-> its domain types (services.engine.generation): requests in,
updates, cards and held usage out. No I/O."""

from __future__ import annotations

import json

from llmserve.engine.v1 import engine_pb2 as pb

from services.engine.errors import InvalidRequestError
from services.engine.generation import (
    ChatTurn,
    FinishReason,
    GenerationUpdate,
    ImageInput,
    ModelInfo,
    Prompt,
    Role,
    Sampling,
    StructuredOutput,
    Timings,
    Tool,
    ToolCall,
    ToolChoice,
    Tools,
)
from services.engine.usage.held import HeldUsage

_ROLES = {
    pb.ROLE_SYSTEM: Role.SYSTEM,
    pb.ROLE_USER: Role.USER,
    pb.ROLE_ASSISTANT: Role.ASSISTANT,
    pb.ROLE_TOOL: Role.TOOL,
}


_FINISH = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}


def model_card(info: ModelInfo, open_streams: int) -> pb.ModelCard:
    return pb.ModelCard(
        id=info.id,
        root=info.root,
        max_model_len=info.max_model_len,
        dtype=info.dtype,
        device=info.device,
        model_name=info.model_name,
        open_streams=open_streams,
        parent=info.parent,
        kind=(
            pb.MODEL_KIND_SCORE
            if info.cross_encoder
            else pb.MODEL_KIND_EMBED
            if info.embeds
            else pb.MODEL_KIND_GENERATE
        ),
    )


def held_usage(held: HeldUsage) -> pb.UnconfirmedUsage:
    out = pb.UnconfirmedUsage(
        request_id=held.request_id,
        usage_context=held.usage_context,
        usage=pb.Usage(
            prompt_tokens=held.usage.prompt_tokens,
            completion_tokens=held.usage.completion_tokens,
            cached_tokens=held.usage.cached_tokens,
        ),
        finish_reasons=[_FINISH[r] for r in held.finish_reasons],
        model=held.model,
        error=held.error or "",
    )
    if held.timings is not None:
        out.timings.CopyFrom(_timings(held.timings))
    return out


def _timings(t: Timings) -> pb.Timings:
    return pb.Timings(
        queue_seconds=t.queue_seconds,
        time_to_first_token_seconds=t.time_to_first_token_seconds,
        generation_seconds=t.generation_seconds,
        total_seconds=t.total_seconds,
    )


def chat_turns(chat: pb.Chat) -> tuple[ChatTurn, ...]:
    turns = []
    for i, message in enumerate(chat.messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise InvalidRequestError(f"messages[{i}] has no role (system, user, assistant or tool)")
        parts = None
        if message.parts:
            parts = tuple(
                ImageInput(p.image.data, p.image.media_type) if p.WhichOneof("kind") == "image" else p.text
                for p in message.parts
            )
        turns.append(
            ChatTurn(
                role=role,
                content=message.content,
                name=message.name or None,
                tool_call_id=message.tool_call_id or None,
                parts=parts,
                tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in message.tool_calls),
            )
        )
    if not turns:
        raise InvalidRequestError("messages must hold at least one message")
    return tuple(turns)


_TOOL_CHOICES = {
    pb.TOOL_CHOICE_MODE_NONE: ToolChoice.NONE,
    pb.TOOL_CHOICE_MODE_AUTO: ToolChoice.AUTO,
    pb.TOOL_CHOICE_MODE_REQUIRED: ToolChoice.REQUIRED,
    pb.TOOL_CHOICE_MODE_FUNCTION: ToolChoice.FUNCTION,
}


def tools(chat: pb.Chat) -> Tools | None:
    """None when the chat offers no tools; a tool choice without tools is refused, as OpenAI does."""
    mode = chat.tool_choice.mode
    if not chat.tools:
        if mode not in (pb.TOOL_CHOICE_MODE_UNSPECIFIED, pb.TOOL_CHOICE_MODE_NONE) or chat.tool_choice.function_name:
            raise InvalidRequestError("tool_choice is only allowed when tools are specified")
        return None
    tools = []
    for i, tool in enumerate(chat.tools):
        parameters = None
        if tool.parameters_json:
            try:
                parameters = json.loads(tool.parameters_json)
            except json.JSONDecodeError as exc:
                raise InvalidRequestError(f"tools[{i}].function.parameters is not valid JSON: {exc}") from exc
        strict = tool.strict if tool.HasField("strict") else None
        tools.append(Tool(name=tool.name, description=tool.description, parameters=parameters, strict=strict))
    return Tools(
        tools=tuple(tools),
        choice=_TOOL_CHOICES.get(mode, ToolChoice.AUTO),
        function=chat.tool_choice.function_name,
        parallel=chat.parallel_tool_calls if chat.HasField("parallel_tool_calls") else True,
    )


def prompt(request: pb.GenerateRequest) -> Prompt:
    which = request.WhichOneof("prompt")
    if which == "text":
        return Prompt(text=request.text)
    if which == "chat":
        return Prompt(chat=chat_turns(request.chat), tools=tools(request.chat))
    if which == "token_ids":
        return Prompt(token_ids=tuple(request.token_ids.ids))
    raise InvalidRequestError("the request has no prompt: give text, chat messages or token ids")


def _optional(message: pb.SamplingParams, name: str) -> float | int | None:
    return getattr(message, name) if message.HasField(name) else None


def _structured(message: pb.StructuredOutput) -> StructuredOutput | None:
    which = message.WhichOneof("kind")
    if which is None:
        return None
    if which == "json_schema":
        return StructuredOutput(json_schema=message.json_schema)
    if which == "json_object":
        return StructuredOutput(json_object=message.json_object) if message.json_object else None
    if which == "regex":
        return StructuredOutput(regex=message.regex)
    return StructuredOutput(choice=tuple(message.choice.values))


def sampling(message: pb.SamplingParams) -> Sampling:
    return Sampling(
        max_tokens=_optional(message, "max_tokens"),
        min_tokens=message.min_tokens,
        temperature=_optional(message, "temperature"),
        top_p=_optional(message, "top_p"),
        top_k=_optional(message, "top_k"),
        min_p=_optional(message, "min_p"),
        seed=_optional(message, "seed"),
        n=message.n or 1,
        stop=tuple(message.stop),
        stop_token_ids=tuple(message.stop_token_ids),
        presence_penalty=_optional(message, "presence_penalty"),
        frequency_penalty=_optional(message, "frequency_penalty"),
        repetition_penalty=_optional(message, "repetition_penalty"),
        ignore_eos=message.ignore_eos,
        logprobs=_optional(message, "logprobs"),
        structured_output=_structured(message.structured_output),
    )


def fill_response(response: pb.GenerateResponse, request_id: str, update: GenerationUpdate) -> pb.GenerateResponse:
    """Writes the update into `response` (an empty message, or one added to a batch in place) and returns it."""
    usage = update.usage
    response.request_id = request_id
    wire_usage = response.usage
    wire_usage.prompt_tokens = usage.prompt_tokens
    wire_usage.completion_tokens = usage.completion_tokens
    wire_usage.cached_tokens = usage.cached_tokens
    response.finished = update.finished
    for choice in update.choices:
        out = response.choices.add(
            index=choice.index,
            text=choice.text,
            token_ids=choice.token_ids,
            finish_reason=_FINISH[choice.finish_reason],
        )
        if choice.stop_string is not None:
            out.stop_string = choice.stop_string
        elif choice.stop_token_id is not None:
            out.stop_token_id = choice.stop_token_id
        for call in choice.tool_calls:
            out.tool_calls.add(index=call.index, id=call.id, name=call.name, arguments=call.arguments)
        if choice.logprobs:
            for lp in choice.logprobs:
                out.logprobs.add(
                    token_id=lp.token_id,
                    token=lp.token,
                    logprob=lp.logprob,
                    top_logprobs=[pb.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob) for t in lp.top],
                )
    if update.timings is not None:
        response.timings.CopyFrom(_timings(update.timings))
    if update.error:
        response.error = update.error
    if update.model:
        response.model = update.model
    return response

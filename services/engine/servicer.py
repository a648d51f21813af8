"""Translates between the engine's protobuf messages and the vLLM adapter; nothing else."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc

from services.engine.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    LaunchFailedError,
    ModelExistsError,
    ModelNotFoundError,
)
from services.engine.generation import (
    ChatTurn,
    EmbeddingRequest,
    FinishReason,
    GenerationRequest,
    GenerationUpdate,
    ImageInput,
    Prompt,
    Role,
    Sampling,
    StructuredOutput,
    ModelInfo,
    Timings,
    Tool,
    ToolCall,
    ToolChoice,
    Tools,
)
from services.engine.generate_many import generate_many
from services.engine.model_host import LaunchSpec, ModelHost
from services.engine.unconfirmed_usage import HeldUsage
from services.service_auth import GATEWAY, Caller, current_caller

# What the engine meters a request under when the server checks no credentials (no callers file).
ANONYMOUS_CALLER = "anonymous"

# The one place domain errors become gRPC statuses (applied by services.grpc_errors).
STATUS_BY_ERROR: dict[type[Exception], grpc.StatusCode] = {
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    EngineUnavailableError: grpc.StatusCode.UNAVAILABLE,
    ModelExistsError: grpc.StatusCode.ALREADY_EXISTS,
    LaunchFailedError: grpc.StatusCode.FAILED_PRECONDITION,
}

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


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, host: ModelHost) -> None:
        self._host = host

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        request_id, updates = self.updates(request)
        async for update in updates:
            yield fill_response(pb.GenerateResponse(), request_id, update)

    async def GenerateMany(
        self, requests: AsyncIterator[pb.GenerateManyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateManyResponse]:
        async for batch in generate_many(self.updates, fill_response, STATUS_BY_ERROR, requests):
            yield batch

    def updates(self, request: pb.GenerateRequest) -> tuple[str, AsyncIterator[GenerationUpdate]]:
        """One request's id and stream, for the current caller; when its span (the current one) records,
        it gets the GenAI attributes and events. No layer is added per update when it does not."""
        request_id = request.request_id or f"gen-{uuid.uuid4().hex}"
        bills_own, meter_as = _billing(request, current_caller())
        domain = GenerationRequest(
            request_id=request_id,
            model=request.model,
            prompt=_prompt(request),
            sampling=_sampling(request.sampling),
            caller=request.caller if bills_own else "",
            usage_context=request.usage_context if bills_own else b"",
            meter_as=meter_as,
        )
        span = trace.get_current_span()
        updates = self._host.generate(domain)
        return request_id, (_traced(span, domain, updates) if span.is_recording() else updates)

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        aborted = await self._host.abort(list(request.request_ids))
        return pb.AbortResponse(aborted_ids=aborted)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        if not request.inputs:
            raise InvalidRequestError("give at least one input to embed")
        inputs: list[str | list[int]] = []
        for i, given in enumerate(request.inputs):
            which = given.WhichOneof("kind")
            if which is None:
                raise InvalidRequestError(f"input {i} has neither text nor token ids")
            inputs.append(given.text if which == "text" else list(given.token_ids.ids))
        bills_own, meter_as = _billing(request, current_caller())
        result = await self._host.embed(EmbeddingRequest(
            request_id=request.request_id or f"emb-{uuid.uuid4().hex}",
            model=request.model,
            inputs=inputs,
            dimensions=request.dimensions if request.HasField("dimensions") else None,
            caller=request.caller if bills_own else "",
            usage_context=request.usage_context if bills_own else b"",
            meter_as=meter_as,
        ))
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=v) for v in result.vectors],
            usage=pb.Usage(prompt_tokens=result.usage.prompt_tokens),
            model=result.model,
        )

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        which = request.WhichOneof("prompt")
        if which is None:
            raise InvalidRequestError("give text or chat messages to tokenize")
        prompt = Prompt(text=request.text) if which == "text" else Prompt(chat=_chat(request.chat), tools=_tools(request.chat))
        add_generation_prompt = request.add_generation_prompt if request.HasField("add_generation_prompt") else True
        ids, max_model_len = await self._host.tokenize(
            request.model, prompt, request.add_special_tokens, add_generation_prompt
        )
        return pb.TokenizeResponse(token_ids=ids, count=len(ids), max_model_len=max_model_len)

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        text = await self._host.detokenize(request.model, list(request.token_ids))
        return pb.DetokenizeResponse(text=text)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[_card(info, streams) for info, streams in self._host.models()])

    async def GetLoad(self, request: pb.GetLoadRequest, context: grpc.aio.ServicerContext) -> pb.GetLoadResponse:
        load = self._host.load()
        served = self._host.totals
        return pb.GetLoadResponse(
            unfinished_requests=load.unfinished_requests,
            open_streams=load.open_streams,
            finished_streams=served.streams,
            prompt_tokens=served.prompt_tokens,
            completion_tokens=served.completion_tokens,
            cached_tokens=served.cached_tokens,
            memory_total_bytes=load.memory_total_bytes,
            memory_available_bytes=load.memory_available_bytes,
            models=load.models,
            held_usage=len(self._host.unconfirmed),
        )

    async def LaunchModel(
        self, request: pb.LaunchModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LaunchModelResponse:
        try:
            engine_args = json.loads(request.engine_args_json) if request.engine_args_json else {}
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"engine_args_json is not valid JSON: {exc}") from exc
        if not isinstance(engine_args, dict):
            raise InvalidRequestError("engine_args_json must be a JSON object")
        if not request.source:
            raise InvalidRequestError("source is required: a model folder or builtin:<name>")
        spec = LaunchSpec(request.uid, request.model_name or request.uid, request.source, engine_args)
        info = await self._host.launch(spec)
        return pb.LaunchModelResponse(model=_card(info, 0))

    async def TerminateModel(
        self, request: pb.TerminateModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.TerminateModelResponse:
        return pb.TerminateModelResponse(aborted_streams=await self._host.terminate(request.uid))


    async def ConfirmUsage(
        self, request: pb.ConfirmUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmUsageResponse:
        self._host.unconfirmed.renew(request.caller)
        self._host.unconfirmed.confirm(list(request.request_ids))
        return pb.ConfirmUsageResponse()

    async def ClaimUsage(self, request: pb.ClaimUsageRequest, context: grpc.aio.ServicerContext) -> pb.ClaimUsageResponse:
        if request.expired:
            if not request.claimer:
                raise InvalidRequestError("claimer is required to claim expired callers' usage")
            held, still_open = self._host.unconfirmed.claim_expired(request.claimer)
            return pb.ClaimUsageResponse(usage=[_unconfirmed(h) for h in held], still_open=still_open)
        if not request.source:
            raise InvalidRequestError("source is required")
        held, still_open = self._host.unconfirmed.claim(
            request.source, request.exclude_incarnation, frozenset(request.request_ids)
        )
        return pb.ClaimUsageResponse(usage=[_unconfirmed(h) for h in held], still_open=still_open)


def _billing(request: pb.GenerateRequest | pb.EmbedRequest, caller: Caller | None) -> tuple[bool, str]:
    """(whether the request's caller bills it itself, else the name the engine meters it under).
    Only a gateway bills its own requests (it names itself in `caller`); anyone else is metered here,
    whatever it sends, so that no token goes unbilled."""
    if caller is None:
        # A server without a callers file: who calls is unknown.
        return (True, "") if request.caller else (False, ANONYMOUS_CALLER)
    if GATEWAY in caller.roles and request.caller:
        return True, ""
    return False, caller.name


def _card(info: ModelInfo, open_streams: int) -> pb.ModelCard:
    return pb.ModelCard(
        id=info.id, root=info.root, max_model_len=info.max_model_len, dtype=info.dtype, device=info.device,
        model_name=info.model_name, open_streams=open_streams,
        kind=pb.MODEL_KIND_EMBED if info.embeds else pb.MODEL_KIND_GENERATE,
    )


def _unconfirmed(held: HeldUsage) -> pb.UnconfirmedUsage:
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


async def _traced(
    span: trace.Span, request: GenerationRequest, updates: AsyncIterator[GenerationUpdate]
) -> AsyncIterator[GenerationUpdate]:
    _request_attributes(span, request)
    span.add_event("queued")
    waiting_first = True
    async for update in updates:
        if waiting_first and any(c.token_ids for c in update.choices):
            span.add_event("first_token")
            waiting_first = False
        if update.finished:
            _final_attributes(span, request, update)
        yield update


def _request_attributes(span: trace.Span, request: GenerationRequest) -> None:
    attributes: dict[str, str | int | float] = {
        "gen_ai.operation.name": "chat" if request.prompt.chat is not None else "text_completion",
        "gen_ai.request.model": request.model,
        "gen_ai.response.id": request.request_id,
    }
    if request.sampling.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.sampling.max_tokens
    if request.sampling.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.sampling.temperature
    span.set_attributes(attributes)


def _final_attributes(span: trace.Span, request: GenerationRequest, update: GenerationUpdate) -> None:
    reasons = [c.finish_reason.value for c in update.choices if c.finish_reason is not None]
    span.add_event("finished", {"gen_ai.response.finish_reasons": reasons})
    attributes: dict[str, object] = {
        "gen_ai.response.model": request.model,
        "gen_ai.usage.input_tokens": update.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": update.usage.completion_tokens,
        "gen_ai.response.finish_reasons": reasons,
        "llmserve.usage.cached_tokens": update.usage.cached_tokens,
    }
    if update.timings is not None:
        attributes["llmserve.time_to_first_token_seconds"] = update.timings.time_to_first_token_seconds
        attributes["llmserve.queue_seconds"] = update.timings.queue_seconds
    span.set_attributes(attributes)


def _chat(chat: pb.Chat) -> tuple[ChatTurn, ...]:
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


def _tools(chat: pb.Chat) -> Tools | None:
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


def _prompt(request: pb.GenerateRequest) -> Prompt:
    which = request.WhichOneof("prompt")
    if which == "text":
        return Prompt(text=request.text)
    if which == "chat":
        return Prompt(chat=_chat(request.chat), tools=_tools(request.chat))
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


def _sampling(message: pb.SamplingParams) -> Sampling:
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

"""The engine's RPCs: each reads its request through services.engine.wire, asks the model host, and answers;
who bills a request is decided by services.engine.usage.billing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import grpc
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc
from opentelemetry import trace

from services.engine.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    LaunchFailedError,
    ModelExistsError,
    ModelNotFoundError,
)
from services.engine.generate_many import generate_many
from services.engine.generation import EmbeddingRequest, GenerationRequest, GenerationUpdate, Prompt, ScoringRequest
from services.engine.model_host import LaunchSpec, ModelHost
from services.engine.request_bounds import RequestBounds, check_chat, check_embed, check_generate, check_score
from services.engine.spans import traced
from services.engine.usage.billing import billing
from services.engine.wire import chat_turns, fill_response, held_usage, model_card, prompt, sampling, tools
from services.service_auth import current_caller

STATUS_BY_ERROR: dict[type[Exception], grpc.StatusCode] = {
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    EngineUnavailableError: grpc.StatusCode.UNAVAILABLE,
    ModelExistsError: grpc.StatusCode.ALREADY_EXISTS,
    LaunchFailedError: grpc.StatusCode.FAILED_PRECONDITION,
}


def _scope() -> str:
    """The scope of the current caller's request ids: its credential's name (none on an open engine)."""
    caller = current_caller()
    return caller.name if caller is not None else ""


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, host: ModelHost, bounds: RequestBounds = RequestBounds()) -> None:
        self._host = host
        self._bounds = bounds

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        request_id, updates = self.updates(request)
        async for update in updates:
            yield fill_response(pb.GenerateResponse(), request_id, update)

    async def GenerateMany(
        self, requests: AsyncIterator[pb.GenerateManyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateManyResponse]:
        async for batch in generate_many(
            self.updates, fill_response, STATUS_BY_ERROR, requests, self._bounds.max_stream_requests
        ):
            yield batch

    def updates(self, request: pb.GenerateRequest) -> tuple[str, AsyncIterator[GenerationUpdate]]:
        """One request's id and stream, for the current caller; when its span (the current one) records,
        it gets the GenAI attributes and events. No layer is added per update when it does not."""
        check_generate(request, self._bounds)
        request_id = request.request_id or f"gen-{uuid.uuid4().hex}"
        billed = billing(request.caller, request.usage_context, current_caller())
        domain = GenerationRequest(
            request_id=request_id,
            model=request.model,
            prompt=prompt(request),
            sampling=sampling(request.sampling),
            caller=billed.caller,
            usage_context=billed.usage_context,
            meter_as=billed.meter_as,
            scope=_scope(),
            cache_salt=request.cache_salt,
        )
        span = trace.get_current_span()
        updates = self._host.generate(domain)
        return request_id, (traced(span, domain, updates) if span.is_recording() else updates)

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        aborted = await self._host.abort(list(request.request_ids), _scope())
        return pb.AbortResponse(aborted_ids=aborted)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        if not request.inputs:
            raise InvalidRequestError("give at least one input to embed")
        check_embed(request, self._bounds)
        inputs: list[str | list[int]] = []
        for i, given in enumerate(request.inputs):
            which = given.WhichOneof("kind")
            if which is None:
                raise InvalidRequestError(f"input {i} has neither text nor token ids")
            inputs.append(given.text if which == "text" else list(given.token_ids.ids))
        billed = billing(request.caller, request.usage_context, current_caller())
        result = await self._host.embed(
            EmbeddingRequest(
                request_id=request.request_id or f"emb-{uuid.uuid4().hex}",
                model=request.model,
                inputs=inputs,
                dimensions=request.dimensions if request.HasField("dimensions") else None,
                caller=billed.caller,
                usage_context=billed.usage_context,
                meter_as=billed.meter_as,
                scope=_scope(),
            )
        )
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=v) for v in result.vectors],
            usage=pb.Usage(prompt_tokens=result.usage.prompt_tokens),
            model=result.model,
        )

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        check_score(request, self._bounds)
        billed = billing(request.caller, request.usage_context, current_caller())
        result = await self._host.score(
            ScoringRequest(
                request_id=request.request_id or f"score-{uuid.uuid4().hex}",
                model=request.model,
                queries=list(request.queries),
                documents=list(request.documents),
                truncate_tokens=request.truncate_prompt_tokens if request.HasField("truncate_prompt_tokens") else None,
                count_only=request.count_only,
                caller=billed.caller,
                usage_context=billed.usage_context,
                meter_as=billed.meter_as,
                scope=_scope(),
            )
        )
        return pb.ScoreResponse(
            scores=result.scores, usage=pb.Usage(prompt_tokens=result.usage.prompt_tokens), model=result.model
        )

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        which = request.WhichOneof("prompt")
        if which is None:
            raise InvalidRequestError("give text or chat messages to tokenize")
        if which == "chat":
            check_chat(request.chat, self._bounds)
        prompt = (
            Prompt(text=request.text)
            if which == "text"
            else Prompt(chat=chat_turns(request.chat), tools=tools(request.chat))
        )
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
        return pb.ListModelsResponse(models=[model_card(info, streams) for info, streams in self._host.models()])

    async def GetLoad(self, request: pb.GetLoadRequest, context: grpc.aio.ServicerContext) -> pb.GetLoadResponse:
        load = self._host.load()
        served = self._host.usage.totals
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
            held_usage=len(self._host.usage.held),
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
        return pb.LaunchModelResponse(model=model_card(info, 0))

    async def TerminateModel(
        self, request: pb.TerminateModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.TerminateModelResponse:
        return pb.TerminateModelResponse(aborted_streams=await self._host.terminate(request.uid))

    async def LoadAdapter(self, request: pb.LoadAdapterRequest, context: grpc.aio.ServicerContext) -> pb.ModelCard:
        if not request.name or not request.path:
            raise InvalidRequestError("name and path are required: the adapter's name and its PEFT folder")
        info = await self._host.load_adapter(request.base_model, request.name, request.path)
        return model_card(info, 0)

    async def UnloadAdapter(
        self, request: pb.UnloadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadAdapterResponse:
        return pb.UnloadAdapterResponse(aborted_requests=await self._host.unload_adapter(request.name))

    async def ConfirmUsage(
        self, request: pb.ConfirmUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmUsageResponse:
        self._host.usage.held.renew(request.caller)
        self._host.usage.held.confirm(list(request.request_ids))
        return pb.ConfirmUsageResponse()

    async def ClaimUsage(
        self, request: pb.ClaimUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClaimUsageResponse:
        if request.expired:
            if not request.claimer:
                raise InvalidRequestError("claimer is required to claim expired callers' usage")
            held, still_open = self._host.usage.held.claim_expired(request.claimer)
            return pb.ClaimUsageResponse(usage=[held_usage(h) for h in held], still_open=still_open)
        if not request.source:
            raise InvalidRequestError("source is required")
        held, still_open = self._host.usage.held.claim(
            request.source, request.exclude_incarnation, frozenset(request.request_ids)
        )
        return pb.ClaimUsageResponse(usage=[held_usage(h) for h in held], still_open=still_open)

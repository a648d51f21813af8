"""What chat and completions share: run the engine calls and answer as a stream or as one response."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import orjson
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.dependencies import GatewayState
from services.gateway.errors import ApiError
from services.gateway.generation import Generation, Outcome
from services.gateway.openai_stream import Kind, ResponseMeta, aggregate, stream_events
from services.gateway.schemas import SamplingFields
from services.gateway.telemetry import RequestSpan
from services.gateway.usage_events import usage_context

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def new_id(kind: Kind) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def response_meta(kind: Kind, response_id: str, body: SamplingFields, logprobs: bool, state: GatewayState) -> ResponseMeta:
    options = body.stream_options
    if options is not None and not body.stream:
        raise ApiError(400, "stream_options can only be set when stream is true.", param="stream_options")
    include_usage = state.settings.force_include_usage or bool(options and options.include_usage)
    return ResponseMeta(
        kind=kind,
        id=response_id,
        created=int(time.time()),
        model=body.model,
        n=body.n,
        logprobs=logprobs,
        include_usage=include_usage,
        continuous_usage=bool(options and options.continuous_usage_stats),
    )


def _finish(span: RequestSpan, state: GatewayState) -> Callable[[Outcome], Awaitable[None]]:
    async def sink(outcome: Outcome) -> None:
        span.finish(outcome)
        await state.record(outcome)

    return sink


async def respond(
    state: GatewayState,
    http_request: Request,
    requests: list[pb.GenerateRequest],
    meta: ResponseMeta,
    key_id: str,
    body: SamplingFields,
    max_tokens: int | None,
) -> Response:
    http_request.state.model = meta.model
    span = RequestSpan(meta, max_tokens, body.temperature)
    outcome = Outcome(
        request_id=meta.id,
        endpoint=http_request.url.path,
        model=meta.model,
        api_key_id=key_id,
        streamed=body.stream,
        trace_id=span.trace_id,
        span_id=span.span_id,
    )
    if state.caller:
        context = usage_context(outcome, state.usage_source).SerializeToString()
        for request in requests:
            request.caller = state.caller
            request.usage_context = context
    gen = Generation(
        state.engine,
        requests,
        outcome,
        timeout=state.settings.request_timeout_seconds,
        settle_timeout=state.settings.settle_timeout_seconds,
        sink=_finish(span, state),
        on_gap=state.metrics.gap_observer(meta.model),
        open_generations=state.open_generations,
    )
    await gen.start(state.settling)
    state.metrics.known_models.add(outcome.model)
    http_request.state.model = outcome.model
    if body.stream:
        return StreamingResponse(
            stream_events(gen, meta, state.settling), media_type="text/event-stream", headers=SSE_HEADERS
        )
    return Response(orjson.dumps(await aggregate(gen, meta, state.settling)), media_type="application/json")

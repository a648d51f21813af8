"""What chat and completions share: run the engine calls and answer as a stream or as one response."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable

import orjson
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.dependencies import GatewayState
from services.gateway.errors import ApiError
from services.gateway.streaming.generation import Generation, Outcome
from services.gateway.streaming.sse import Kind, ResponseMeta, aggregate, stream_events
from services.gateway.openai_api.schemas import SamplingFields
from services.gateway.telemetry import RequestSpan
from services.gateway.usage.events import usage_context

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


async def _start_on_an_engine(
    state: GatewayState, requests: list[pb.GenerateRequest], outcome: Outcome, span: RequestSpan, model: str
) -> Generation:
    """Opens the request on the engine with the fewest outstanding requests that serves the model. An
    engine that refuses it as unavailable before its first token (down, draining) leaves rotation, and
    another replica gets the request; after the first token there is no retry."""
    tried: list[str] = []
    while True:
        member = state.fleet.pick(model, exclude=tried)
        member.outstanding += 1

        def release(member=member) -> None:
            member.outstanding -= 1

        gen = Generation(
            member.client,
            requests,
            # Each attempt its own: a refused attempt's settling must not touch the next one's outcome.
            dataclasses.replace(outcome),
            timeout=state.settings.request_timeout_seconds,
            settle_timeout=state.settings.settle_timeout_seconds,
            sink=_finish(span, state),
            on_gap=state.metrics.gap_observer(model),
            open_generations=state.open_generations,
            on_closed=release,
        )
        try:
            await gen.start(state.settling)
            return gen
        except ApiError as refused:
            tried.append(member.address)
            if refused.status != 503 or not state.fleet.alternatives(model, tried):
                raise
            state.fleet.mark_down(member)


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
        model_name=state.fleet.model_name(meta.model),
        trace_id=span.trace_id,
        span_id=span.span_id,
    )
    if state.caller:
        context = usage_context(outcome, state.usage_source).SerializeToString()
        for request in requests:
            request.caller = state.caller
            request.usage_context = context
    gen = await _start_on_an_engine(state, requests, outcome, span, meta.model)
    state.metrics.known_models.add(gen.outcome.model)
    http_request.state.model = gen.outcome.model
    if body.stream:
        return StreamingResponse(
            stream_events(gen, meta, state.settling), media_type="text/event-stream", headers=SSE_HEADERS
        )
    return Response(orjson.dumps(await aggregate(gen, meta, state.settling)), media_type="application/json")

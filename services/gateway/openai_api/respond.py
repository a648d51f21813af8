"""What chat and completions share: open the request on an engine (through the fleet's router) and
answer as a stream or as one response; the finished request goes to its span and the recorder."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.access import AccessPolicy
from services.gateway.errors import ApiError
from services.gateway.fleet.router import RequestRouter
from services.gateway.limits.admission import generation_tokens
from services.gateway.limits.keeper import LimitsKeeper
from services.gateway.limits.price_book import PriceBook, cost_fields
from services.gateway.metrics import GatewayMetrics
from services.gateway.openai_api.protocol import SamplingFields
from services.gateway.outcome import Outcome
from services.gateway.streaming.chunks import Json
from services.gateway.streaming.generation import Generation
from services.gateway.streaming.open_generations import OpenGenerations
from services.gateway.streaming.sse import Kind, ResponseMeta, aggregate, stream_events
from services.gateway.telemetry import RequestSpan
from services.gateway.usage.recorder import OutcomeRecorder

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class Shape:
    """How a generation is answered: as SSE events, and as one body (OpenAI's, or another API's)."""

    stream: Callable[[Generation, ResponseMeta, set[asyncio.Task]], AsyncIterator[bytes]]
    aggregate: Callable[[Generation, ResponseMeta, set[asyncio.Task]], Awaitable[Json]]


OPENAI = Shape(stream_events, aggregate)
# nginx's name for it: nobody reads the answer, but the access accounting sees why the request ended.
CLIENT_CLOSED_REQUEST = 499


class Responder:
    def __init__(
        self,
        router: RequestRouter,
        recorder: OutcomeRecorder,
        metrics: GatewayMetrics,
        generations: OpenGenerations,
        force_include_usage: bool,
        limits: LimitsKeeper | None = None,
        share_prefix_cache: bool = False,
        access: AccessPolicy | None = None,
        prices: PriceBook | None = None,
    ) -> None:
        self._access = access
        self._prices = prices
        self._share_prefix_cache = share_prefix_cache
        self._limits = limits
        self._router = router
        self._recorder = recorder
        self._metrics = metrics
        self._generations = generations
        self._force_include_usage = force_include_usage

    def meta(self, kind: Kind, body: SamplingFields, logprobs: bool) -> ResponseMeta:
        """The response's id and shape; refuses stream_options without a stream."""
        options = body.stream_options
        if options is not None and not body.stream:
            raise ApiError(400, "stream_options can only be set when stream is true.", param="stream_options")
        return ResponseMeta(
            kind=kind,
            id=f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model,
            n=body.n,
            logprobs=logprobs,
            include_usage=self._force_include_usage or bool(options and options.include_usage),
            continuous_usage=bool(options and options.continuous_usage_stats),
        )

    async def respond(
        self,
        http_request: Request,
        requests: list[pb.GenerateRequest],
        meta: ResponseMeta,
        key_id: str,
        body: SamplingFields,
        max_tokens: int | None,
        images: int = 0,
        shape: Shape = OPENAI,
    ) -> Response:
        """images: how many the prompt carries (priced per image where the model's price says so)."""
        http_request.state.model = meta.model
        if self._access is not None:
            self._access.check_model(key_id, meta.model)
        model_name = self._router.model_name(meta.model)
        # The price in force, looked up once: admission, the reservation's cost and `usage.cost` use it.
        price = None
        if self._prices is not None:
            price = self._prices.admit(meta.model, model_name)
            asked = body.usage.include if body.usage is not None else None
            if asked or (asked is None and self._access is not None and self._access.includes_cost(key_id)):
                meta = dataclasses.replace(meta, cost=lambda p, c, k: cost_fields(price, p, c, k, images))
        span = RequestSpan(meta, max_tokens, body.temperature)
        outcome = Outcome(
            request_id=meta.id,
            endpoint=http_request.url.path,
            model=meta.model,
            api_key_id=key_id,
            streamed=body.stream,
            model_name=model_name,
            trace_id=span.trace_id,
            span_id=span.span_id,
            images=images,
        )
        if not self._share_prefix_cache:
            # A key's cached prefixes are its own: a hit (cached_tokens) tells nothing of another key's prompts.
            for engine_request in requests:
                engine_request.cache_salt = f"key:{key_id}"
        headers: dict[str, str] = {}
        on_unbilled = None
        limits = self._limits
        if limits is not None and limits.limited(key_id):
            await limits.refuse_if_spent(key_id)
            prompt, completion = await generation_tokens(self._router.fleet, requests, max_tokens)
            headers = await limits.reserve(meta.id, key_id, prompt, completion, price, images)

            def on_unbilled() -> None:
                limits.settle(meta.id, 0, 0, 0)

        delivery = self._recorder.delivery
        if delivery is not None:
            delivery.stamp(requests, outcome)

        async def finished(outcome: Outcome) -> None:
            span.finish(outcome)
            await self._recorder.record(outcome)

        gen = await self._router.open(
            requests, outcome, finished, self._metrics.gap_observer(meta.model), on_unbilled=on_unbilled
        )
        self._metrics.known_models.add(gen.outcome.model)
        http_request.state.model = gen.outcome.model
        settling = self._generations.settling
        if body.stream:
            return StreamingResponse(
                shape.stream(gen, meta, settling), media_type="text/event-stream", headers={**SSE_HEADERS, **headers}
            )
        body_task = asyncio.ensure_future(shape.aggregate(gen, meta, settling))
        hang_up = asyncio.ensure_future(_client_gone(http_request))
        try:
            await asyncio.wait((body_task, hang_up), return_when=asyncio.FIRST_COMPLETED)
        finally:
            hang_up.cancel()
            if not body_task.done():
                # The client left before the body was ready: as with a stream, the engine aborts the
                # request and its usage so far is billed (aggregate settles it in the background).
                body_task.cancel()
        try:
            body_json = await body_task
        except asyncio.CancelledError:
            if hang_up.cancelled() or not hang_up.done():
                raise
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return Response(orjson.dumps(body_json), media_type="application/json", headers=headers)


async def _client_gone(http_request: Request) -> None:
    """Returns when the client disconnects (the body was read already: only a disconnect can come)."""
    while (await http_request.receive())["type"] != "http.disconnect":
        pass

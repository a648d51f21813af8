"""Translates between the metering protobuf messages and the ledger; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from llmserve.metering.v1 import metering_pb2 as pb
from llmserve.metering.v1 import metering_pb2_grpc
from opentelemetry import trace

from services.contracts.usage_terms import BUDGET_PERIOD_NAMES, BUDGET_PERIODS
from services.metering.account_errors import AlreadyExists, InvalidChange, NotFound
from services.metering.events import UsageEvent
from services.metering.key_rpcs import KeyRpcs, scope
from services.metering.key_watch import KeyWatch
from services.metering.ledger import DUPLICATE, RECORDED, REJECTED, Ack, Ledger
from services.metering.limits import KeyLimits, Standing
from services.metering.price_rpcs import PriceRpcs
from services.metering.store import Query, StoreUnavailable, Totals, UsageStore


class InvalidQuery(ValueError):
    pass


class AllRejected(ValueError):
    pass


# The one place domain errors become gRPC statuses (applied by services.grpc_errors).
STATUS_BY_ERROR: dict[type[Exception], grpc.StatusCode] = {
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    InvalidChange: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    InvalidQuery: grpc.StatusCode.INVALID_ARGUMENT,
    AllRejected: grpc.StatusCode.INVALID_ARGUMENT,
}

_STATUS = {pb.REQUEST_STATUS_OK: "ok", pb.REQUEST_STATUS_ABORT: "abort", pb.REQUEST_STATUS_ERROR: "error"}
_ACK = {RECORDED: pb.ACK_STATUS_RECORDED, DUPLICATE: pb.ACK_STATUS_DUPLICATE, REJECTED: pb.ACK_STATUS_REJECTED}
_BUCKET_SECONDS = {pb.BUCKET_MINUTE: 60, pb.BUCKET_HOUR: 3600, pb.BUCKET_DAY: 86400}


def to_event(message: pb.UsageEvent) -> UsageEvent:
    occurred = message.occurred_at
    return UsageEvent(
        event_id=message.event_id,
        source=message.source,
        occurred_at=occurred.seconds + occurred.nanos / 1e9 if message.HasField("occurred_at") else 0.0,
        model=message.model,
        api_key_id=message.api_key_id,
        endpoint=message.endpoint,
        streamed=message.streamed,
        finish_reason=message.finish_reason,
        status=_STATUS.get(message.status, ""),
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        cached_tokens=message.cached_tokens,
        time_to_first_token_seconds=message.time_to_first_token_seconds,
        generation_seconds=message.generation_seconds,
        request_seconds=message.request_seconds,
        trace_id=message.trace_id,
        model_name=message.model_name,
        caller=message.caller,
        images=message.images,
        embedding_inputs=message.embedding_inputs,
    )


def _totals(t: Totals) -> pb.Totals:
    return pb.Totals(
        requests=t.requests,
        prompt_tokens=t.prompt_tokens,
        completion_tokens=t.completion_tokens,
        cached_tokens=t.cached_tokens,
        ok_requests=t.ok_requests,
        aborted_requests=t.aborted_requests,
        failed_requests=t.failed_requests,
        generation_seconds=t.generation_seconds,
        cost_micro=t.cost_micro,
        unpriced_requests=t.unpriced_requests,
    )


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _query(time_range: pb.TimeRange, model: str, api_key_id: str, model_name: str = "", caller: str = "") -> Query:
    start = _seconds(getattr(time_range, "from")) if time_range.HasField("from") else None
    end = _seconds(time_range.to) if time_range.HasField("to") else None
    if start is not None and end is not None and end < start:
        raise InvalidQuery("the time range ends before it starts")
    return Query(start=start, end=end, model=model, api_key_id=api_key_id, model_name=model_name, caller=caller)


def _acks(acks: list[Ack]) -> pb.RecordUsageResponse:
    return pb.RecordUsageResponse(
        acks=[pb.Ack(event_id=a.event_id, status=_ACK[a.status], reason=a.reason) for a in acks]
    )


def trace_ingest(events: Sequence[pb.UsageEvent], acks: list[Ack]) -> None:
    """Each event that carries its request's trace context gets an ingest span in that trace,
    linked to the RPC span that delivered it. Nothing happens when tracing is off."""
    rpc = trace.get_current_span()
    if not rpc.is_recording():
        return
    tracer = trace.get_tracer("llmserve.metering")
    link = trace.Link(rpc.get_span_context())
    for event, ack in zip(events, acks):
        if not (event.trace_id and event.span_id):
            continue
        try:
            parent = trace.SpanContext(
                trace_id=int(event.trace_id, 16),
                span_id=int(event.span_id, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
        except ValueError:
            continue
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        with tracer.start_as_current_span("metering.ingest_event", context=context, links=[link]) as span:
            span.set_attributes(
                {
                    "llmserve.usage_event.id": event.event_id,
                    "llmserve.usage_event.ack": ack.status,
                    "gen_ai.request.model": event.model,
                    "gen_ai.usage.input_tokens": event.prompt_tokens,
                    "gen_ai.usage.output_tokens": event.completion_tokens,
                }
            )


def to_limits(message: pb.KeyLimits) -> KeyLimits:
    if not message.api_key_id:
        raise InvalidQuery("api_key_id is required")
    period = BUDGET_PERIOD_NAMES.get(message.budget_period)
    if period is None:
        raise InvalidQuery("budget_period must be TOTAL, DAY or MONTH")
    return KeyLimits(
        api_key_id=message.api_key_id,
        requests_per_minute=message.requests_per_minute if message.HasField("requests_per_minute") else None,
        tokens_per_minute=message.tokens_per_minute if message.HasField("tokens_per_minute") else None,
        token_budget=message.token_budget if message.HasField("token_budget") else None,
        budget_period=period,
        money_budget_micro=message.money_budget_micro if message.HasField("money_budget_micro") else None,
    )


def limits_message(limits: KeyLimits) -> pb.KeyLimits:
    message = pb.KeyLimits(api_key_id=limits.api_key_id, budget_period=BUDGET_PERIODS[limits.budget_period])
    for name in ("requests_per_minute", "tokens_per_minute", "token_budget", "money_budget_micro"):
        if (value := getattr(limits, name)) is not None:
            setattr(message, name, value)
    return message


def standing_message(standings: tuple[Standing, ...]) -> pb.Standing:
    """The first standing, carrying those of the levels above it."""
    message = _standing(standings[0])
    message.levels.extend(_standing(s) for s in standings[1:])
    return message


def _standing(standing: Standing) -> pb.Standing:
    spent = standing.spent
    message = pb.Standing(
        api_key_id=standing.limits.api_key_id,
        limits=limits_message(standing.limits),
        limited=standing.limits.any,
        requests_last_minute=spent.requests_last_minute,
        tokens_last_minute=spent.tokens_last_minute,
        budget_used=spent.budget_used,
        reserved_tokens=spent.reserved_tokens,
        reset_requests_seconds=standing.window_reset_seconds if standing.limits.requests_per_minute else 0.0,
        reset_tokens_seconds=standing.window_reset_seconds if standing.limits.tokens_per_minute else 0.0,
        budget_reset_seconds=standing.budget_reset_seconds
        if standing.limits.token_budget is not None or standing.limits.money_budget_micro is not None
        else 0.0,
        level=standing.level,
        money_used_micro=spent.money_used,
    )
    for name in ("remaining_requests", "remaining_tokens", "remaining_budget"):
        if (value := getattr(standing, name)) is not None:
            setattr(message, name, value)
    if standing.remaining_money is not None:
        message.remaining_money_micro = standing.remaining_money
    return message


def _holder(source: str, lease_seconds: float) -> None:
    if not source:
        raise InvalidQuery("source is required")
    if not 0 < lease_seconds <= 3600:
        raise InvalidQuery("lease_seconds must be above 0 and at most 3600")


class MeteringServicer(KeyRpcs, PriceRpcs, metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, ledger: Ledger, keys: KeyWatch, refuse_unpriced: bool = True) -> None:
        self._ledger = ledger
        self._keys = keys
        self._refuse_unpriced = refuse_unpriced

    async def _record(self, request: pb.RecordUsageRequest) -> list[Ack]:
        acks = await self._ledger.record([to_event(e) for e in request.events])
        trace_ingest(request.events, acks)
        if acks and all(a.status == REJECTED for a in acks):
            reasons = "; ".join(f"{a.event_id or '(no id)'}: {a.reason}" for a in acks[:5])
            raise AllRejected(f"every event was rejected: {reasons}")
        return acks

    async def RecordUsage(
        self, request: pb.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordUsageResponse:
        return _acks(await self._record(request))

    async def StreamUsage(
        self, requests: AsyncIterator[pb.RecordUsageRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RecordUsageResponse]:
        async for request in requests:
            acks = await self._ledger.record([to_event(e) for e in request.events])
            trace_ingest(request.events, acks)
            yield _acks(acks)

    async def GetTotals(self, request: pb.GetTotalsRequest, context: grpc.aio.ServicerContext) -> pb.GetTotalsResponse:
        group_by = tuple(
            name
            for name, wanted in (
                ("model", request.group_by_model),
                ("model_name", request.group_by_model_name),
                ("api_key_id", request.group_by_api_key),
                ("caller", request.group_by_caller),
            )
            if wanted
        )
        query = _query(request.range, request.model, request.api_key_id, request.model_name, request.caller)
        rows = await self._ledger.totals(query, group_by)
        return pb.GetTotalsResponse(
            rows=[
                pb.TotalsRow(
                    model=labels.get("model", ""),
                    model_name=labels.get("model_name", ""),
                    api_key_id=labels.get("api_key_id", ""),
                    caller=labels.get("caller", ""),
                    totals=_totals(t),
                )
                for labels, t in rows
            ],
            currency=await self._ledger.read(UsageStore.currency),
        )

    async def GetUsageSeries(
        self, request: pb.GetUsageSeriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageSeriesResponse:
        bucket = _BUCKET_SECONDS.get(request.bucket)
        if bucket is None:
            raise InvalidQuery("bucket must be MINUTE, HOUR or DAY")
        query = _query(request.range, request.model, request.api_key_id, request.model_name, request.caller)
        points = await self._ledger.series(query, bucket)
        response = pb.GetUsageSeriesResponse()
        for start, totals in points:
            point = response.points.add(totals=_totals(totals))
            point.start.FromSeconds(int(start))
        return response

    async def GetCounters(
        self, request: pb.GetCountersRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCountersResponse:
        counters = await self._ledger.counters()
        models = [
            pb.ModelCounters(
                model=model, totals=_totals(m.totals), events_ingested=m.totals.requests, events_duplicated=m.duplicated
            )
            for model, m in sorted(counters.models.items())
        ]
        return pb.GetCountersResponse(
            models=models,
            all=_totals(counters.all()),
            events_ingested=sum(m.events_ingested for m in models),
            events_duplicated=sum(m.events_duplicated for m in models),
            events_rejected=sum(counters.rejections.values()),
            events_rejected_by_reason=counters.rejections,
            reservations_without_event=counters.without_event[0],
            reservation_tokens_without_event=counters.without_event[1],
        )

    async def GetThroughput(
        self, request: pb.GetThroughputRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetThroughputResponse:
        rates = await self._ledger.throughput()
        counters = (await self._ledger.counters()).models
        response = pb.GetThroughputResponse()
        for model in sorted(set(counters) | set(rates)):
            totals = counters[model].totals if model in counters else Totals()
            windows = rates.get(model, {})
            response.models.add(
                model=model,
                tokens_per_second_10s=windows.get(10.0, 0.0),
                tokens_per_second_60s=windows.get(60.0, 0.0),
                tokens_per_generation_second=(
                    totals.completion_tokens / totals.generation_seconds if totals.generation_seconds else 0.0
                ),
            )
        return response

    async def Reserve(self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext) -> pb.ReserveResponse:
        _holder(request.source, request.lease_seconds)
        if not (request.event_id and request.api_key_id):
            raise InvalidQuery("event_id and api_key_id are required")
        if request.cost_micro < 0:
            raise InvalidQuery("cost_micro must not be negative")
        decision, standing = await self._ledger.reserve(
            request.source,
            request.event_id,
            request.api_key_id,
            request.tokens,
            request.lease_seconds,
            request.cost_micro,
        )
        return pb.ReserveResponse(
            granted=decision.granted,
            refusal=decision.refusal,
            reason=decision.reason,
            standing=standing_message(standing),
        )

    async def Settle(self, request: pb.SettleRequest, context: grpc.aio.ServicerContext) -> pb.SettleResponse:
        if not (request.source and request.event_id):
            raise InvalidQuery("source and event_id are required")
        cost = request.cost_micro if request.HasField("cost_micro") else None
        await self._ledger.settle(request.source, request.event_id, request.tokens, cost)
        return pb.SettleResponse()

    async def RenewLease(
        self, request: pb.RenewLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewLeaseResponse:
        _holder(request.source, request.lease_seconds)
        await self._ledger.renew(request.source, request.lease_seconds)
        return pb.RenewLeaseResponse()

    async def SetLimits(self, request: pb.SetLimitsRequest, context: grpc.aio.ServicerContext) -> pb.SetLimitsResponse:
        standing = await self._ledger.set_limits(to_limits(request.limits), request.actor, scope(request))
        self._keys.poke()  # the gateways' key watches tell them to read the limits again
        return pb.SetLimitsResponse(standing=standing_message(standing))

    async def ListLimits(
        self, request: pb.ListLimitsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLimitsResponse:
        return pb.ListLimitsResponse(limits=[limits_message(k) for k in await self._ledger.all_limits()])

    async def GetStanding(self, request: pb.GetStandingRequest, context: grpc.aio.ServicerContext) -> pb.Standing:
        if not request.api_key_id:
            raise InvalidQuery("api_key_id is required")
        return standing_message(await self._ledger.standing(request.api_key_id, scope(request)))

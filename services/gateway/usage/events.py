"""Builds the metering event of one request: from its Outcome, or from usage the engine held for a
gateway that crashed before recording it (see services.engine.usage.held)."""

from __future__ import annotations

import time
from collections import defaultdict

from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.metering.v1 import metering_pb2 as mpb

from services.contracts.usage_terms import REQUEST_STATUS, finish_reason_summary, request_status
from services.gateway.outcome import FINISH_REASONS, Outcome


def usage_event(outcome: Outcome, source: str) -> mpb.UsageEvent:
    """The event id is the response id: deterministic per request, so a retry is recognised."""
    event = usage_context(outcome, source)
    event.model = outcome.model
    event.finish_reason = finish_reason_summary(outcome.finish_reasons)
    event.status = REQUEST_STATUS[outcome.status]
    event.prompt_tokens = outcome.prompt_tokens
    event.completion_tokens = outcome.completion_tokens
    event.cached_tokens = outcome.cached_tokens
    event.time_to_first_token_seconds = outcome.time_to_first_token_seconds
    event.generation_seconds = outcome.generation_seconds
    event.request_seconds = outcome.duration_seconds
    event.occurred_at.FromNanoseconds(time.time_ns())
    return event


def usage_context(outcome: Outcome, source: str) -> mpb.UsageEvent:
    """What the engine keeps with a request's usage (as bytes it does not read): the event without counts."""
    return mpb.UsageEvent(
        event_id=outcome.request_id,
        source=source,
        model=outcome.model,
        model_name=outcome.model_name,
        api_key_id=outcome.api_key_id,
        endpoint=outcome.endpoint,
        streamed=outcome.streamed,
        trace_id=outcome.trace_id,
        span_id=outcome.span_id,
        images=outcome.images,
        embedding_inputs=outcome.embedding_inputs,
    )


def events_from_unconfirmed(held: list[pb.UnconfirmedUsage]) -> list[tuple[mpb.UsageEvent, list[str]]]:
    """One event per response (its engine calls summed, as the gateway would have), with the engine
    request ids it covers."""
    groups: dict[str, list[pb.UnconfirmedUsage]] = defaultdict(list)
    contexts: dict[str, mpb.UsageEvent] = {}
    for item in held:
        context = mpb.UsageEvent.FromString(item.usage_context)
        groups[context.event_id].append(item)
        contexts.setdefault(context.event_id, context)
    out = []
    for event_id, items in groups.items():
        event = contexts[event_id]
        reasons = [FINISH_REASONS[r] or "abort" for item in items for r in item.finish_reasons]
        event.model = items[0].model or event.model
        event.prompt_tokens = sum(i.usage.prompt_tokens for i in items)
        event.completion_tokens = sum(i.usage.completion_tokens for i in items)
        event.cached_tokens = sum(i.usage.cached_tokens for i in items)
        event.finish_reason = finish_reason_summary(reasons)
        event.status = REQUEST_STATUS[request_status(reasons, any(i.error for i in items))]
        event.time_to_first_token_seconds = max(i.timings.time_to_first_token_seconds for i in items)
        event.generation_seconds = max(i.timings.generation_seconds for i in items)
        event.request_seconds = max(i.timings.total_seconds for i in items)
        event.occurred_at.FromNanoseconds(time.time_ns())
        out.append((event, [i.request_id for i in items]))
    return out

"""Builds the metering event of one request from its Outcome."""

from __future__ import annotations

import time

from llmserve.metering.v1 import metering_pb2 as mpb

from services.gateway.generation import Outcome

_STATUS = {"ok": mpb.REQUEST_STATUS_OK, "abort": mpb.REQUEST_STATUS_ABORT, "error": mpb.REQUEST_STATUS_ERROR}


def usage_event(outcome: Outcome, source: str) -> mpb.UsageEvent:
    """The event id is the response id: deterministic per request, so a retry is recognised."""
    event = mpb.UsageEvent(
        event_id=outcome.request_id,
        source=source,
        model=outcome.model,
        api_key_id=outcome.api_key_id,
        endpoint=outcome.endpoint,
        streamed=outcome.streamed,
        finish_reason=",".join(outcome.finish_reasons),
        status=_STATUS[outcome.status],
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        cached_tokens=outcome.cached_tokens,
        time_to_first_token_seconds=outcome.time_to_first_token_seconds,
        generation_seconds=outcome.generation_seconds,
        request_seconds=outcome.duration_seconds,
        trace_id=outcome.trace_id,
        span_id=outcome.span_id,
    )
    event.occurred_at.FromNanoseconds(time.time_ns())
    return event

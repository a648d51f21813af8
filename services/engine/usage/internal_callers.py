"""The usage of internal callers that do not bill their own requests (anything but a gateway): the
engine makes each request's usage event itself and delivers it to metering through its own outbox.

Why the engine and not the caller: a caller that is not a gateway has no outbox, no metering credential
and no reason to be trusted with its own bill; the engine is the one place every token passes. The event
is committed to the engine's outbox before the stream's final message leaves (so a stream that ended is
metered even if the engine is killed a moment later), then delivered like the gateway's events, and
metering counts it once (its id is made here, once per request)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from llmserve.metering.v1 import metering_pb2 as mpb
from opentelemetry import trace
from prometheus_client import REGISTRY

from services.contracts.metering_client import MeteringClient
from services.contracts.usage_terms import REQUEST_STATUS, finish_reason_summary, request_status
from services.engine.generation import FinishReason, ModelInfo, Timings, Usage
from services.usage_outbox.outbox import OUTBOX_FILE, Outbox
from services.usage_outbox.sender import SenderMetrics, UsageSender

SOURCE = "engine"
ENDPOINT = "grpc:Generate"


@dataclass(frozen=True)
class Metered:
    """One finished request of an internal caller."""

    caller: str
    model: ModelInfo
    usage: Usage
    finish_reasons: list[FinishReason]
    timings: Timings
    error: str | None
    endpoint: str = ENDPOINT


def usage_event(metered: Metered, trace_id: str = "") -> mpb.UsageEvent:
    reasons = [r.value for r in metered.finish_reasons]
    status = REQUEST_STATUS[request_status(reasons, bool(metered.error))]
    event = mpb.UsageEvent(
        event_id=f"eng-{uuid.uuid4().hex}",
        source=SOURCE,
        model=metered.model.id,
        model_name=metered.model.model_name,
        caller=metered.caller,
        endpoint=metered.endpoint,
        streamed=metered.endpoint == ENDPOINT,
        finish_reason=finish_reason_summary(reasons),
        status=status,
        prompt_tokens=metered.usage.prompt_tokens,
        completion_tokens=metered.usage.completion_tokens,
        cached_tokens=metered.usage.cached_tokens,
        time_to_first_token_seconds=metered.timings.time_to_first_token_seconds,
        generation_seconds=metered.timings.generation_seconds,
        request_seconds=metered.timings.total_seconds,
        trace_id=trace_id,
    )
    event.occurred_at.FromNanoseconds(time.time_ns())
    return event


class InternalCallerUsage:
    def __init__(self, metering_addr: str, token: str | None, data_dir: Path, drain_seconds: float) -> None:
        self._metering_addr = metering_addr
        self._token = token
        self._data_dir = data_dir
        self._drain_seconds = drain_seconds
        self._sender: UsageSender | None = None

    async def start(self) -> None:
        """In the serving event loop: the metering channel belongs to the loop it is made in."""
        self._sender = UsageSender(
            MeteringClient(self._metering_addr, self._token),
            Outbox(self._data_dir / OUTBOX_FILE),
            SenderMetrics(REGISTRY, "engine"),
        )
        await self._sender.start()

    async def record(self, metered: Metered) -> None:
        """Returns once the event is durable in the outbox."""
        assert self._sender is not None, "start() first"
        await self._sender.persist(usage_event(metered, _trace_id()))

    def record_soon(self, metered: Metered) -> asyncio.Future[None]:
        """For a request being cancelled, which cannot wait: committed with the next group."""
        assert self._sender is not None, "start() first"
        return self._sender.submit(usage_event(metered, _trace_id()))

    async def stop(self) -> None:
        if self._sender is not None:
            await self._sender.stop(self._drain_seconds)


def _trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""

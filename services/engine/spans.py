"""The GenAI attributes and events of a generation's server span (set only when the span records)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from opentelemetry import trace

from services.engine.generation import GenerationRequest, GenerationUpdate


async def traced(
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

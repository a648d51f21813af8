"""OpenTelemetry GenAI attributes on the gateway's request span (a no-op when tracing is off)."""

from __future__ import annotations

from opentelemetry import trace

from services.gateway.outcome import Outcome
from services.gateway.streaming.sse import ResponseMeta


class RequestSpan:
    def __init__(self, meta: ResponseMeta, max_tokens: int | None, temperature: float | None) -> None:
        self.span = trace.get_current_span()
        self.recording = self.span.is_recording()
        context = self.span.get_span_context()
        self.trace_id = format(context.trace_id, "032x") if context.is_valid else ""
        self.span_id = format(context.span_id, "016x") if context.is_valid else ""
        if not self.recording:
            return
        attributes: dict[str, str | int | float] = {
            "gen_ai.operation.name": "chat" if meta.kind == "chat" else "text_completion",
            "gen_ai.request.model": meta.model,
            "gen_ai.response.id": meta.id,
        }
        if max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = max_tokens
        if temperature is not None:
            attributes["gen_ai.request.temperature"] = temperature
        self.span.set_attributes(attributes)

    def finish(self, outcome: Outcome) -> None:
        if not self.recording:
            return
        self.span.set_attributes(
            {
                "gen_ai.response.model": outcome.model,
                "gen_ai.usage.input_tokens": outcome.prompt_tokens,
                "gen_ai.usage.output_tokens": outcome.completion_tokens,
                "gen_ai.response.finish_reasons": outcome.finish_reasons,
                "llmserve.usage.cached_tokens": outcome.cached_tokens,
                "llmserve.request.status": outcome.status,
            }
        )

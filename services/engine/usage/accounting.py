"""The one object the vLLM adapter reports a request's usage to: it adds it to the engine's totals, holds
it for the gateway that bills it, or makes an internal caller's event of it, by one rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from services.engine.generation import FinishReason, ModelInfo, Timings, Usage
from services.engine.usage.held import HeldUsageStore
from services.engine.usage.internal_callers import ENDPOINT, InternalCallerUsage, Metered
from services.engine.usage.totals import UsageTotals


class Billed(Protocol):
    """What a request carries about who bills it (services.engine.usage.billing)."""

    request_id: str
    caller: str
    usage_context: bytes
    meter_as: str


@dataclass(frozen=True)
class Counted:
    """A request's usage as vLLM's outputs counted it."""

    usage: Usage
    finish_reasons: list[FinishReason]
    timings: Timings
    error: str | None = None


@dataclass
class EngineUsage:
    """Shared by every model of one engine: a model's usage outlives the model."""

    totals: UsageTotals = field(default_factory=UsageTotals)
    held: HeldUsageStore = field(default_factory=HeldUsageStore)
    internal: InternalCallerUsage | None = None

    def opened(self, request: Billed, model: str) -> None:
        """The request reached vLLM: a gateway's is held for it from now on (claimable if it is lost)."""
        if request.caller:
            self.held.open(request.request_id, request.caller, request.usage_context, model)

    async def meter(self, request: Billed, model: ModelInfo, counted: Counted, endpoint: str = ENDPOINT) -> bool:
        """An internal caller's event, durable before the request's final answer leaves; False when the
        engine does not meter this request."""
        if not request.meter_as or self.internal is None:
            return False
        await self.internal.record(_metered(request, model, counted, endpoint))
        return True

    def closed(self, request: Billed, model: ModelInfo, counted: Counted | None, metered: bool) -> None:
        """The one rule every counter follows: a request counts once vLLM produced output for it (an abort's
        final output included: `counted`); one refused before that (None) counts nothing anywhere. An
        internal caller's request cut short before `meter` is metered with the next commit group."""
        if counted is not None:
            self.totals.add(counted.usage)
        if request.caller:
            if counted is not None:
                self.held.finish(
                    request.request_id, counted.usage, counted.finish_reasons, counted.timings, counted.error
                )
            else:
                self.held.discard(request.request_id)
        if counted is not None and not metered and request.meter_as and self.internal is not None:
            self.internal.record_soon(_metered(request, model, counted, ENDPOINT))


def _metered(request: Billed, model: ModelInfo, counted: Counted, endpoint: str) -> Metered:
    return Metered(
        request.meter_as, model, counted.usage, counted.finish_reasons, counted.timings, counted.error, endpoint
    )

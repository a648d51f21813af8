"""Where every finished request goes, once: its metrics, then its usage event (durable before the
response's last byte, when metering is configured), then its reservation settled to its exact usage."""

from __future__ import annotations

from collections.abc import Callable

from services.gateway.limits.keeper import LimitsKeeper
from services.gateway.metrics import GatewayMetrics
from services.gateway.outcome import Outcome
from services.gateway.usage.delivery import UsageDelivery


class OutcomeRecorder:
    def __init__(
        self, metrics: GatewayMetrics, delivery: UsageDelivery | None, limits: LimitsKeeper | None = None
    ) -> None:
        self._metrics = metrics
        self.delivery = delivery
        self._limits = limits
        # Called with each outcome before it is delivered (tests and benchmarks watch here).
        self.observers: list[Callable[[Outcome], None]] = []

    async def record(self, outcome: Outcome) -> None:
        self._metrics.outcome(outcome)
        for observe in self.observers:
            observe(outcome)
        if self.delivery is not None:
            await self.delivery.record(outcome)
        if self._limits is not None:
            self._limits.settle(
                outcome.request_id, outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens
            )

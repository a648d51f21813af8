"""FastAPI dependencies: the app's shared objects, and the caller's key id."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from services.gateway.config import GatewaySettings
from services.gateway.fleet.engines import EngineFleet
from services.gateway.fleet.manager import ModelManager
from services.gateway.streaming.generation import Generation, Outcome, OutcomeSink
from services.gateway.metrics import GatewayMetrics
from services.gateway.middleware import InFlight
from services.gateway.usage.sender import UsageSender


@dataclass
class GatewayState:
    settings: GatewaySettings
    fleet: EngineFleet
    metrics: GatewayMetrics
    in_flight: InFlight
    models: ModelManager
    # No API keys configured: Xinference's client then sends none (GET /v1/cluster/auth).
    keys_open: bool = False
    # Requests whose client left, waiting for the engine's final usage.
    settling: set[asyncio.Task] = field(default_factory=set)
    extra_sinks: list[OutcomeSink] = field(default_factory=list)
    # The usage delivery, when metering is configured: the sender, the event source, and the caller
    # name ("<source>/<incarnation>") the engine holds usage for until it is confirmed.
    usage: UsageSender | None = None
    usage_source: str = ""
    caller: str = ""
    # Requests streaming from the engine now: interrupted (with their usage) when a drain runs out.
    open_generations: set[Generation] = field(default_factory=set)

    def interrupt_all(self, reason: str) -> int:
        generations = list(self.open_generations)
        for generation in generations:
            generation.interrupt(reason, self.settling)
        return len(generations)

    async def record(self, outcome: Outcome) -> None:
        self.metrics.outcome(outcome)
        for sink in self.extra_sinks:
            await sink(outcome)


async def get_state(request: Request) -> GatewayState:
    # async: FastAPI would run a plain def in its thread pool, a thread hop per request.
    return request.app.state.gateway


State = Annotated[GatewayState, Depends(get_state)]


async def require_key(request: Request) -> str:
    """The caller's key id, checked by the middleware (services.gateway.access) before the body was read."""
    return request.state.key_id


KeyId = Annotated[str, Depends(require_key)]

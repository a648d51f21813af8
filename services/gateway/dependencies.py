"""FastAPI dependencies: the app's shared objects, and the API key check."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from services.engine.client import EngineClient
from services.gateway.auth import ApiKeys
from services.gateway.config import GatewaySettings
from services.gateway.errors import ApiError
from services.gateway.generation import Generation, Outcome, OutcomeSink
from services.gateway.metrics import GatewayMetrics
from services.gateway.usage_sender import UsageSender

OPEN_KEY_ID = "anonymous"


@dataclass
class GatewayState:
    settings: GatewaySettings
    engine: EngineClient
    keys: ApiKeys
    metrics: GatewayMetrics
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


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def require_key(request: Request, state: State) -> str:
    """The caller's key id; 401 when keys are configured and the bearer token matches none."""
    if state.keys.open:
        return OPEN_KEY_ID
    token = _bearer(request)
    if token is None:
        raise ApiError(401, "Missing API key: send `Authorization: Bearer <key>`.", code="invalid_api_key")
    key_id = state.keys.key_id(token)
    if key_id is None:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
    return key_id


KeyId = Annotated[str, Depends(require_key)]


async def require_metrics_access(request: Request, state: State) -> None:
    if state.settings.metrics_require_key:
        await require_key(request, state)

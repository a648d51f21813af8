"""FastAPI dependencies: each shared object the app built, by concern, and the caller's key id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from services.gateway.access import AccessPolicy
from services.gateway.config import GatewaySettings
from services.gateway.fleet.engines import EngineFleet
from services.gateway.fleet.manager import ModelManager
from services.gateway.fleet.router import RequestRouter
from services.gateway.limits.keeper import LimitsKeeper
from services.gateway.metrics import GatewayMetrics
from services.gateway.middleware import InFlight
from services.gateway.streaming.open_generations import OpenGenerations
from services.gateway.usage.delivery import UsageDelivery
from services.gateway.usage.recorder import OutcomeRecorder


def app_state(name: str) -> Any:
    # async: FastAPI would run a plain def in its thread pool, a thread hop per request.
    async def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(get)


Settings = Annotated[GatewaySettings, app_state("settings")]
Access = Annotated[AccessPolicy, app_state("access")]
Fleet = Annotated[EngineFleet, app_state("fleet")]
Models = Annotated[ModelManager, app_state("models")]
Metrics = Annotated[GatewayMetrics, app_state("metrics")]
Limits = Annotated[InFlight, app_state("in_flight")]
Usage = Annotated[UsageDelivery | None, app_state("usage")]
Router = Annotated[RequestRouter, app_state("router")]
Record = Annotated[OutcomeRecorder, app_state("recorder")]
Generations = Annotated[OpenGenerations, app_state("generations")]
# None without metering: no limits per key.
KeyLimits = Annotated[LimitsKeeper | None, app_state("limits")]


async def require_key(request: Request) -> str:
    """The caller's key id, checked by the middleware (services.gateway.access) before the body was read."""
    return request.state.key_id


KeyId = Annotated[str, Depends(require_key)]

"""FastAPI dependencies: each shared object the app built, by concern, and the caller's key id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from services.gateway.access import AccessPolicy
from services.gateway.config import GatewaySettings
from services.gateway.fleet.engines import EngineFleet
from services.gateway.fleet.manager import ModelManager
from services.gateway.limits.keeper import LimitsKeeper
from services.gateway.metrics import GatewayMetrics
from services.gateway.middleware import InFlight
from services.gateway.openai_api.images import ImagePolicy
from services.gateway.openai_api.respond import Responder
from services.gateway.streaming.open_generations import OpenGenerations
from services.gateway.usage.delivery import UsageDelivery
from services.gateway.usage.recorder import OutcomeRecorder


def _app_state(name: str) -> Any:
    # async: FastAPI would run a plain def in its thread pool, a thread hop per request.
    async def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(get)


Settings = Annotated[GatewaySettings, _app_state("settings")]
Access = Annotated[AccessPolicy, _app_state("access")]
Fleet = Annotated[EngineFleet, _app_state("fleet")]
Models = Annotated[ModelManager, _app_state("models")]
Metrics = Annotated[GatewayMetrics, _app_state("metrics")]
Limits = Annotated[InFlight, _app_state("in_flight")]
Images = Annotated[ImagePolicy, _app_state("image_policy")]
Usage = Annotated[UsageDelivery | None, _app_state("usage")]
Generate = Annotated[Responder, _app_state("responder")]
Record = Annotated[OutcomeRecorder, _app_state("recorder")]
Generations = Annotated[OpenGenerations, _app_state("generations")]
# None without metering: no limits per key.
KeyLimits = Annotated[LimitsKeeper | None, _app_state("limits")]


async def require_key(request: Request) -> str:
    """The caller's key id, checked by the middleware (services.gateway.access) before the body was read."""
    return request.state.key_id


KeyId = Annotated[str, Depends(require_key)]

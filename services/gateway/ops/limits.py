"""GET /v1/limits (the calling key's standing), GET /v1/limits/{key_id} (an admin: any key's) and
PUT /v1/limits/{key_id} (an admin sets a key's limits; every replica applies them to its next request)."""

from __future__ import annotations

from typing import Literal

import grpc
from fastapi import APIRouter, Request
from llmserve.metering.v1 import metering_pb2 as mpb
from pydantic import BaseModel, ConfigDict, Field

from services.contracts.usage_terms import BUDGET_PERIOD_NAMES, BUDGET_PERIODS
from services.gateway.dependencies import KeyId, KeyLimits
from services.gateway.errors import ApiError
from services.gateway.limits.keeper import LimitsKeeper

router = APIRouter(prefix="/v1")


class LimitsBody(BaseModel):
    """A field left out or null: no such limit. All left out: the key has no limits."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, ge=0, lt=2**63)
    tokens_per_minute: int | None = Field(None, ge=0, lt=2**63)
    token_budget: int | None = Field(None, ge=0, lt=2**63)
    budget_period: Literal["total", "day", "month"] = "total"


def _optional(message: object, name: str) -> int | None:
    return getattr(message, name) if message.HasField(name) else None  # type: ignore[attr-defined]


def standing_json(standing: mpb.Standing) -> dict:
    limits = standing.limits
    return {
        "api_key_id": standing.api_key_id,
        "limited": standing.limited,
        "limits": {
            "requests_per_minute": _optional(limits, "requests_per_minute"),
            "tokens_per_minute": _optional(limits, "tokens_per_minute"),
            "token_budget": _optional(limits, "token_budget"),
            "budget_period": BUDGET_PERIOD_NAMES[limits.budget_period],
        },
        "usage": {
            "requests_last_minute": standing.requests_last_minute,
            "tokens_last_minute": standing.tokens_last_minute,
            "budget_used": standing.budget_used,
            "reserved_tokens": standing.reserved_tokens,
        },
        "remaining": {
            "requests": _optional(standing, "remaining_requests"),
            "tokens": _optional(standing, "remaining_tokens"),
            "budget": _optional(standing, "remaining_budget"),
        },
        "reset_seconds": {
            "requests": standing.reset_requests_seconds,
            "tokens": standing.reset_tokens_seconds,
            "budget": standing.budget_reset_seconds,
        },
    }


def _keeper(limits: LimitsKeeper | None) -> LimitsKeeper:
    if limits is None:
        raise ApiError(404, "Limits per key need metering (GATEWAY_METERING_ADDR).", code="limits_off")
    return limits


async def _standing(limits: LimitsKeeper, key_id: str) -> dict:
    try:
        return standing_json(await limits.standing(key_id))
    except grpc.aio.AioRpcError as error:
        raise ApiError(503, "Metering cannot be reached to read the limits.", code="limits_unavailable") from error


@router.get("/limits")
async def own_standing(limits: KeyLimits, key_id: KeyId) -> dict:
    return await _standing(_keeper(limits), key_id)


@router.get("/limits/{api_key_id}")
async def key_standing(api_key_id: str, request: Request, limits: KeyLimits, key_id: KeyId) -> dict:
    if api_key_id != key_id and not request.app.state.access.is_operator(key_id):
        raise ApiError(403, "Reading another key's limits needs an admin API key.", code="permission_denied")
    return await _standing(_keeper(limits), api_key_id)


@router.put("/limits/{api_key_id}")
async def set_limits(api_key_id: str, body: LimitsBody, limits: KeyLimits, key_id: KeyId) -> dict:
    message = mpb.KeyLimits(api_key_id=api_key_id, budget_period=BUDGET_PERIODS[body.budget_period])
    for name in ("requests_per_minute", "tokens_per_minute", "token_budget"):
        if (value := getattr(body, name)) is not None:
            setattr(message, name, value)
    try:
        return standing_json(await _keeper(limits).set_limits(message))
    except grpc.aio.AioRpcError as error:
        raise ApiError(503, "Metering cannot be reached to set the limits.", code="limits_unavailable") from error

"""GET /v1/limits (the calling key's standing, with its team's and organisation's), GET /v1/limits/{id}
(an admin: any key's, team's or organisation's; an organisation's admin: those of its organisation) and
PUT /v1/limits/{id} (an admin sets them; every replica applies them to its next request)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from llmserve.metering.v1 import metering_pb2 as mpb
from pydantic import Field

from services.contracts.usage_terms import BUDGET_PERIOD_NAMES, BUDGET_PERIODS
from services.gateway.dependencies import Access, KeyId, KeyLimits
from services.gateway.errors import ApiError
from services.gateway.limits.keeper import LimitsKeeper
from services.gateway.openai_api.protocol import ValidText
from services.gateway.ops.metering_calls import call

router = APIRouter(prefix="/v1")


class LimitsBody(ValidText):
    """A field left out or null: no such limit. All left out: the key has no limits."""

    requests_per_minute: int | None = Field(None, ge=0, lt=2**63)
    tokens_per_minute: int | None = Field(None, ge=0, lt=2**63)
    token_budget: int | None = Field(None, ge=0, lt=2**63)
    budget_period: Literal["total", "day", "month"] = "total"
    # Micro-units of the price book's currency (25 USD: 25000000), over the budget period.
    money_budget_micro: int | None = Field(None, ge=0, lt=2**63)


def _optional(message: object, name: str) -> int | None:
    return getattr(message, name) if message.HasField(name) else None  # type: ignore[attr-defined]


def standing_json(standing: mpb.Standing) -> dict:
    """A subject's standing; a key's lists its team's and organisation's under `levels` (each binds: a
    key's budget above its team's does not lift the team's), and `binding` names the level with the least
    budget left."""
    body = _level_json(standing)
    if standing.levels:
        body["levels"] = [_level_json(level) for level in standing.levels]
    budgets = [level for level in (standing, *standing.levels) if level.HasField("remaining_budget")]
    if budgets:
        tightest = min(budgets, key=lambda level: level.remaining_budget)
        body["binding"] = {"level": tightest.level, "id": tightest.api_key_id, "budget": tightest.remaining_budget}
    return body


def _level_json(standing: mpb.Standing) -> dict:
    limits = standing.limits
    return {
        "api_key_id": standing.api_key_id,
        "level": standing.level,
        "limited": standing.limited,
        "limits": {
            "requests_per_minute": _optional(limits, "requests_per_minute"),
            "tokens_per_minute": _optional(limits, "tokens_per_minute"),
            "token_budget": _optional(limits, "token_budget"),
            "budget_period": BUDGET_PERIOD_NAMES[limits.budget_period],
            "money_budget_micro": _optional(limits, "money_budget_micro"),
        },
        "usage": {
            "requests_last_minute": standing.requests_last_minute,
            "tokens_last_minute": standing.tokens_last_minute,
            "budget_used": standing.budget_used,
            "reserved_tokens": standing.reserved_tokens,
            "money_used_micro": standing.money_used_micro,
        },
        "remaining": {
            "requests": _optional(standing, "remaining_requests"),
            "tokens": _optional(standing, "remaining_tokens"),
            "budget": _optional(standing, "remaining_budget"),
            "money_micro": _optional(standing, "remaining_money_micro"),
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


@router.get("/limits")
async def own_standing(limits: KeyLimits, key_id: KeyId) -> dict:
    return standing_json(await call(_keeper(limits).standing(key_id), "limit"))


@router.get("/limits/{subject}")
async def key_standing(subject: str, limits: KeyLimits, key_id: KeyId, access: Access) -> dict:
    scope = None if subject == key_id else access.admin_scope(key_id, "Reading another key's limits")
    return standing_json(await call(_keeper(limits).standing(subject, scope or ""), "limit"))


@router.put("/limits/{subject}")
async def set_limits(subject: str, body: LimitsBody, limits: KeyLimits, key_id: KeyId, access: Access) -> dict:
    scope = access.admin_scope(key_id, "Setting limits")
    message = mpb.KeyLimits(api_key_id=subject, budget_period=BUDGET_PERIODS[body.budget_period])
    for name in ("requests_per_minute", "tokens_per_minute", "token_budget", "money_budget_micro"):
        if (value := getattr(body, name)) is not None:
            setattr(message, name, value)
    return standing_json(await call(_keeper(limits).set_limits(message, key_id, scope or ""), "limit"))

"""GET /health: 200 only when an engine answers its health check and usage can be recorded durably."""

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.gateway.dependencies import Access, Fleet, Usage

router = APIRouter()


@router.get("/health", include_in_schema=True)
async def health(fleet: Fleet, usage: Usage, access: Access) -> JSONResponse:
    members = fleet.members
    answers = await asyncio.gather(*(m.client.serving(timeout=2.0) for m in members))
    engine = any(answers)
    body: dict[str, object] = {
        "engine": "serving" if engine else "unavailable",
        # Counts, not addresses: /health is open, and the internal addresses are nobody else's business.
        "engines": {"serving": sum(answers), "configured": len(members)},
    }
    healthy = engine
    if usage is not None:
        usage_ok = usage.healthy
        body["usage"] = {
            "status": "ok" if usage_ok else "failing",
            "pending": usage.pending,
            # Events metering refused: never billed until an operator replays them (services.gateway.usage.admin).
            "dead_letters": usage.dead_letters,
            **({"outbox_error": usage.outbox_error} if usage.outbox_error else {}),
        }
        healthy = healthy and usage_ok
    if access.issued is not None:
        # Not a failure: keys already known keep working while metering cannot be reached.
        watch = "connected" if access.issued.connected else "disconnected"
        body["issued_keys"] = {"watch": watch, "known": access.issued.count}
    body["status"] = "ok" if healthy else "unavailable"
    return JSONResponse(body, status_code=200 if healthy else 503)

"""GET /health: 200 only when the engine answers its health check."""

from fastapi import APIRouter, Response

from services.gateway.dependencies import State

router = APIRouter()


@router.get("/health", include_in_schema=True)
async def health(state: State) -> Response:
    serving = await state.engine.serving(timeout=2.0)
    return Response(status_code=200 if serving else 503)

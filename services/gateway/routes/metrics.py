"""GET /metrics: the gateway's Prometheus exposition."""


from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.dependencies import State, require_metrics_access

router = APIRouter()


@router.get("/metrics", dependencies=[Depends(require_metrics_access)])
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)



"""GET /metrics: the gateway's Prometheus exposition (who may read it: services.gateway.access)."""


from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.dependencies import Metrics

router = APIRouter()


@router.get("/metrics")
async def metrics(gateway_metrics: Metrics) -> Response:
    return Response(generate_latest(gateway_metrics.registry), media_type=CONTENT_TYPE_LATEST)



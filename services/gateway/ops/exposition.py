"""GET /metrics: the gateway's Prometheus exposition (who may read it: services.gateway.access)."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from services.gateway.dependencies import Metrics
from services.gateway.metrics import multiprocess as multiprocess_mode

router = APIRouter()


@router.get("/metrics")
async def metrics(gateway_metrics: Metrics) -> Response:
    if multiprocess_mode():
        # Every worker's metrics, summed, whichever worker answers the scrape.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(gateway_metrics.registry), media_type=CONTENT_TYPE_LATEST)

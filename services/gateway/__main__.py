"""Starts the gateway: `python -m services.gateway` (settings from GATEWAY_* environment variables)."""

from __future__ import annotations

import uvicorn

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.tracing import grpc_client_instrumentation, setup_logging, setup_tracing, shutdown_tracing


def main() -> None:
    settings = GatewaySettings()
    setup_logging(settings.log_level)
    setup_tracing("gateway")
    grpc_client_instrumentation()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.settle_timeout_seconds),
        access_log=False,
        log_config=None,
    )
    shutdown_tracing()


if __name__ == "__main__":
    main()

"""Starts the gateway: `python -m services.gateway` (settings from GATEWAY_* environment variables)."""

from __future__ import annotations

import logging

import uvicorn

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.settle_timeout_seconds),
        access_log=False,
    )


if __name__ == "__main__":
    main()

"""Starts the gateway: `python -m services.gateway` (settings from GATEWAY_* environment variables)."""

from __future__ import annotations

import socket

import uvicorn

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.connections import head_deadline_protocol
from services.gateway.shutdown import DrainingServer
from services.gateway.workers import Supervisor
from services.tracing import grpc_client_instrumentation, setup_logging, setup_tracing, shutdown_tracing


def main() -> None:
    settings = GatewaySettings()
    setup_logging(settings.log_level)
    if settings.workers > 1:
        raise SystemExit(Supervisor(settings).run())
    setup_tracing("gateway")
    grpc_client_instrumentation()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # The drain interrupts what still runs after the grace period; those streams then need the
        # engine's final message, which the settle timeout bounds.
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds + settings.settle_timeout_seconds) + 1,
        access_log=False,
        log_config=None,
        http=head_deadline_protocol(settings.header_timeout_seconds),
        timeout_keep_alive=settings.keep_alive_seconds,
        # Beyond this many open connections (or requests in progress), uvicorn answers 503.
        limit_concurrency=settings.max_connections,
    )
    # A worker listens beside its siblings; the kernel spreads connections over their sockets.
    sockets = None
    if settings.reuse_port:
        sockets = [socket.create_server((settings.host, settings.port), reuse_port=True, backlog=2048)]
    DrainingServer(config, app, settings.shutdown_grace_seconds).run(sockets=sockets)
    shutdown_tracing()


if __name__ == "__main__":
    main()

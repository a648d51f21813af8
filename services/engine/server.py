"""Builds the engine's grpc.aio server (servicer, health, reflection) and runs it until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from llmserve.engine.v1 import engine_pb2, engine_pb2_grpc

from services.engine.servicer import STATUS_BY_ERROR, EngineServicer
from services.grpc_errors import ErrorInterceptor
from services.engine.vllm_backend import VllmBackend

log = logging.getLogger(__name__)

SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name

# Long prompts and many stop strings fit; anything larger is a mistake.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class EngineServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    backend: VllmBackend
    port: int

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)


def build_server(backend: VllmBackend, address: str) -> EngineServer:
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(STATUS_BY_ERROR)],
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    engine_pb2_grpc.add_EngineServiceServicer_to_server(EngineServicer(backend), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(address)
    return EngineServer(server=server, health=health_servicer, backend=backend, port=port)


async def serve(backend: VllmBackend, address: str, grace_seconds: float) -> int:
    """Serves; health turns SERVING once vLLM is up. On SIGTERM/SIGINT: drain, then stop.
    Returns the exit code: 1 when vLLM died under us."""
    # grpc.aio binds the server to the running loop, so it is built here.
    engine = build_server(backend, address)
    await engine.set_serving(False)
    await engine.server.start()
    log.info("engine listening on port %d; starting vLLM", engine.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    starting = asyncio.create_task(engine.backend.start())
    waiting = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if starting.done():
        starting.result()
        await engine.set_serving(True)
        log.info("engine ready")
        watching = asyncio.create_task(_watch_for_death(engine.backend))
        await asyncio.wait({waiting, watching}, return_when=asyncio.FIRST_COMPLETED)
        if watching.done():
            log.error("vLLM died: leaving so that a supervisor restarts the engine")
            exit_code = 1
        watching.cancel()
    else:
        starting.cancel()
    log.info("shutting down: draining for up to %.1f s", grace_seconds)
    await engine.health.enter_graceful_shutdown()
    await engine.backend.drain(grace_seconds)
    await engine.server.stop(1.0)
    engine.backend.shutdown()
    return exit_code


async def _watch_for_death(backend: VllmBackend, interval: float = 1.0) -> None:
    while not backend.dead:
        await asyncio.sleep(interval)

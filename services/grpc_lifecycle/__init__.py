"""What the gRPC services share about their server's life: health, reflection, the error
interceptor, and a run loop that turns NOT_SERVING and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.grpc_errors import ErrorInterceptor, StatusTable

# Long prompts and big batches fit; anything larger is a mistake.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    port: int

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", *self.service_names):
            await self.health.set(service, status)


def build_server(
    address: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    status_table: StatusTable,
    auth: grpc.aio.ServerInterceptor | None = None,
    reflection_enabled: bool = True,
) -> GrpcServer:
    """Must be called inside the running event loop (grpc.aio binds the server to it). `auth` checks
    each call's credential before anything else runs."""
    server = grpc.aio.server(
        interceptors=[*([auth] if auth else []), ErrorInterceptor(status_table)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    if reflection_enabled:
        reflection.enable_server_reflection((*service_names, health_name, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    return GrpcServer(server, health_servicer, tuple(service_names), port)


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def shut_down(grpc_server: GrpcServer, drain: Callable[[], Awaitable[None]], grace_seconds: float) -> None:
    """Health NOT_SERVING first (so balancers move away), then the service's own drain, then stop."""
    await grpc_server.health.enter_graceful_shutdown()
    await drain()
    await grpc_server.server.stop(grace_seconds)

"""The client side of every service: one long-lived channel with keepalive, a caller's token, and a health check."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Keep one HTTP/2 connection alive across idle periods so the first call after a pause does not pay
# for a reconnect, and notice a dead peer within seconds. An address that names several replicas
# (`ipv4:10.0.0.1:50052,10.0.0.2:50052`, or `dns:///metering-headless:50052`) spreads calls over
# every replica that answers, skipping the dead.
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class ServiceChannel:
    """Base of the typed clients: `async with Client(addr, token) as client:` or call `close()`.
    With a token, each call carries it as `authorization: Bearer <token>` (services.service_auth)."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self):  # noqa: ANN204 - returns the subclass
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def serving(self, timeout: float | None = 5.0) -> bool:
        """True when the service's health check says SERVING."""
        try:
            response = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

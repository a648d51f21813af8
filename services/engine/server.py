"""Builds the engine's grpc.aio server and runs it: SERVING once vLLM is up; on SIGTERM, drain then stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from llmserve.engine.v1 import engine_pb2, engine_pb2_grpc
from prometheus_client import Counter

from services.engine.model_host import LaunchSpec, ModelHost
from services.engine.request_bounds import RequestBounds
from services.engine.servicer import STATUS_BY_ERROR, EngineServicer
from services.grpc_lifecycle import GrpcServer, build_server, shut_down, wait_for_stop_signal
from services.service_auth import ADMIN, GATEWAY, GENERATE, AuthInterceptor

log = logging.getLogger(__name__)

SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name

# The gateway runs work and bills it itself (its bookkeeping: ConfirmUsage, ClaimUsage, Abort); an
# internal caller (generate) runs work the engine meters for it; an admin reads the load and manages models.
POLICY = {
    **{
        f"/{SERVICE_NAME}/{method}": frozenset({GATEWAY, GENERATE})
        for method in ("Generate", "GenerateMany", "Embed", "Score", "Tokenize", "Detokenize")
    },
    **{f"/{SERVICE_NAME}/{method}": frozenset({GATEWAY}) for method in ("Abort", "ConfirmUsage", "ClaimUsage")},
    # The gateway manages models for its admin-key holders; an operator may too.
    **{
        f"/{SERVICE_NAME}/{method}": frozenset({GATEWAY, ADMIN})
        for method in ("LaunchModel", "TerminateModel", "LoadAdapter", "UnloadAdapter")
    },
    **{f"/{SERVICE_NAME}/{method}": frozenset({GATEWAY, ADMIN, GENERATE}) for method in ("ListModels",)},
    **{f"/{SERVICE_NAME}/{method}": frozenset({GATEWAY, ADMIN}) for method in ("GetLoad",)},
}

# In the default registry, which the engine's metrics port serves beside vLLM's own metrics.
AUTH_FAILURES = Counter("engine_auth_failures", "gRPC calls refused for their credential", ["method", "reason"])


def build_engine_server(
    host: ModelHost,
    address: str,
    auth: AuthInterceptor | None = None,
    reflection: bool = True,
    bounds: RequestBounds = RequestBounds(),
) -> GrpcServer:
    return build_server(
        address,
        lambda server: engine_pb2_grpc.add_EngineServiceServicer_to_server(EngineServicer(host, bounds), server),
        [SERVICE_NAME],
        STATUS_BY_ERROR,
        auth=auth,
        reflection_enabled=reflection,
    )


class UsageKeeper(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve(
    host: ModelHost,
    first: LaunchSpec | None,
    address: str,
    grace_seconds: float,
    auth: AuthInterceptor | None = None,
    reflection: bool = True,
    keepers: Sequence[UsageKeeper] = (),
    bounds: RequestBounds = RequestBounds(),
) -> int:
    """Serves once the first model (if any) is up. Returns the exit code: 1 when vLLM failed to start
    the first model, or when every model's vLLM died (so a supervisor restarts the engine). The usage
    keepers (the internal callers' outbox, the held usage's journal) start before the first call and
    stop after the drain, when the aborted streams' usage is known."""
    for keeper in keepers:
        await keeper.start()
    try:
        return await _serve(host, first, address, grace_seconds, auth, reflection, bounds)
    finally:
        for keeper in keepers:
            await keeper.stop()


async def _serve(
    host: ModelHost,
    first: LaunchSpec | None,
    address: str,
    grace_seconds: float,
    auth: AuthInterceptor | None,
    reflection: bool,
    bounds: RequestBounds,
) -> int:
    engine = build_engine_server(host, address, auth, reflection, bounds)
    await engine.set_serving(False)
    await engine.server.start()
    log.info("engine listening on port %d; starting vLLM", engine.port)
    starting = asyncio.create_task(host.launch(first) if first is not None else asyncio.sleep(0))
    stopping = asyncio.create_task(wait_for_stop_signal())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if starting.done() and starting.exception() is not None:
        log.error("vLLM failed to start: %s", starting.exception(), exc_info=starting.exception())
        stopping.cancel()
        await engine.server.stop(None)
        return 1
    if starting.done():
        await engine.set_serving(True)
        log.info("engine ready")
        watching = asyncio.create_task(_watch_for_death(host))
        await asyncio.wait({stopping, watching}, return_when=asyncio.FIRST_COMPLETED)
        if watching.done():
            log.error("every model's vLLM died: leaving so that a supervisor restarts the engine")
            exit_code = 1
        watching.cancel()
    else:
        starting.cancel()
    log.info("shutting down: draining for up to %.1f s", grace_seconds)
    await shut_down(engine, lambda: host.drain(grace_seconds), 1.0)
    host.shutdown()
    return exit_code


async def _watch_for_death(host: ModelHost, interval: float = 1.0) -> None:
    """Returns when a model died and none is left; a model that died beside others is only unlisted."""
    while True:
        await asyncio.sleep(interval)
        if host.reap_dead() and host.empty:
            return

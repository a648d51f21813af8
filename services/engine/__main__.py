"""Starts the engine: `python -m services.engine [--model DIR] [--port N] ...` (see --help)."""

from __future__ import annotations

import logging
import os

import uvloop
from prometheus_client import start_http_server

from services.contracts.builtin_models import BUILTIN_PREFIX, EMBEDDED_MODEL_NAME
from services.engine.backend_factory import backend_factory
from services.engine.config import EngineSettings
from services.engine.model_host import LaunchSpec, ModelHost
from services.engine.prepare_model import ensure_embedded_model
from services.engine.server import AUTH_FAILURES, POLICY, serve
from services.engine.usage.accounting import EngineUsage
from services.engine.usage.held import HeldUsageStore
from services.engine.usage.internal_callers import InternalCallerUsage
from services.engine.usage.journal import HeldUsageJournal, HeldUsageKeeper
from services.service_auth import interceptor_from_file, read_token
from services.tracing import grpc_server_instrumentation, setup_logging, setup_tracing, shutdown_tracing

log = logging.getLogger("services.engine")


def main() -> None:
    settings = EngineSettings(_cli_parse_args=True)
    setup_logging(settings.log_level)
    setup_tracing("engine")
    grpc_server_instrumentation()
    first: LaunchSpec | None = None
    if settings.start_model:
        model_path = settings.model or str(ensure_embedded_model(settings.model_store))
        name = settings.served_model(model_path).name
        # The embedded model starts as its built-in registration does (its chat template with tools).
        first = LaunchSpec(uid=name, model_name=name, source=settings.model or f"{BUILTIN_PREFIX}{EMBEDDED_MODEL_NAME}")

    from vllm.platforms import current_platform

    internal_callers = None
    if settings.metering_addr:
        token = read_token(settings.service_token_file) if settings.service_token_file else None
        internal_callers = InternalCallerUsage(
            settings.metering_addr, token, settings.data_dir, settings.usage_drain_seconds
        )
    else:
        log.warning("no metering configured: requests of callers that do not bill their own are not metered")
    factory = backend_factory(settings, current_platform.is_cpu(), first.uid if first else None)
    usage = EngineUsage(held=HeldUsageStore(lease_seconds=settings.caller_lease_seconds), internal=internal_callers)
    host = ModelHost(factory, usage)
    held = HeldUsageKeeper(HeldUsageJournal(settings.data_dir / "held_usage.sqlite3"), usage.held)
    if settings.metrics_port:
        # vLLM's vllm:* metrics of every hosted model are in the default registry (vllm_metrics.py).
        start_http_server(settings.metrics_port, addr=settings.host)
    # uvloop, as vLLM's own server runs: less event-loop overhead per streamed message.
    auth = interceptor_from_file(settings.callers_file, POLICY, AUTH_FAILURES, "engine")
    code = uvloop.run(
        serve(
            host,
            first,
            f"{settings.host}:{settings.port}",
            settings.shutdown_grace_seconds,
            auth,
            settings.reflection,
            [held] if internal_callers is None else [internal_callers, held],
            settings.request_bounds,
        )
    )
    shutdown_tracing()
    if code:
        # A vLLM that failed or died can leave non-daemon threads behind that would keep the
        # process alive; leave now so the supervisor restarts it.
        logging.shutdown()
        os._exit(code)


# vLLM starts its workers with spawn, which re-imports this module: keep the guard.
if __name__ == "__main__":
    main()

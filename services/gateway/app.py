"""Builds the gateway's FastAPI app: routers, error handlers, limits, and the engine channel's lifetime."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.engine.client import EngineClient
from services.gateway.access import AccessPolicy
from services.gateway.auth import ApiKeys
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import GatewayState
from services.gateway.errors import ApiError
from services.gateway.fleet import routes as model_management
from services.gateway.fleet.catalog import CATALOG_FILE, Catalog
from services.gateway.fleet.engines import EngineFleet, EngineMember, split_targets
from services.gateway.fleet.manager import ModelManager
from services.gateway.streaming.generation import Outcome
from services.gateway.metrics import GatewayMetrics
from services.gateway.middleware import InFlight, RequestLimits
from services.gateway.openai_api import chat, completions, models, tokenize
from services.gateway.ops import health, metrics
from services.gateway.usage.outbox import OUTBOX_FILE, Outbox
from services.gateway.openai_api.schemas import InvalidText, UnsupportedFields
from services.gateway.usage.events import usage_event
from services.gateway.usage.recovery import UsageConfirmer, new_incarnation, recover_unconfirmed
from services.gateway.usage.sender import SenderMetrics, UsageSender
from services.metering.client import MeteringClient
from services.tracing import tracing_configured

log = logging.getLogger(__name__)


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, "The request body is not valid JSON.", param=None, code="invalid_json")
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, UnsupportedFields):
        return ApiError(400, str(cause), param=cause.names[0], code="unsupported_parameter")
    if isinstance(cause, InvalidText):
        param = ".".join([str(p) for p in first.get("loc", ()) if p != "body"] + [cause.path])
        return ApiError(400, f"{param}: not valid Unicode text (it holds a lone surrogate)", param=param, code="invalid_value")
    location = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(location) or None
    message = first.get("msg", "Invalid request.").removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = _validation_error(exc)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ApiError(exc.status_code, str(exc.detail))
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        error = ApiError(500, "Internal server error.", code="internal_error")
        return JSONResponse(error.body(), status_code=500)


async def _start_usage_delivery(
    settings: GatewaySettings, metrics_: GatewayMetrics, state: GatewayState
) -> tuple[UsageSender, UsageConfirmer, set[asyncio.Task]]:
    """Usage goes to the outbox (durable), then to metering; the engine holds each request's usage
    until it is durable here, and what an earlier process of ours left unrecorded is claimed back."""
    source = settings.source_id()
    incarnation = new_incarnation()
    sender = UsageSender(
        MeteringClient(settings.metering_addr, settings.service_token()),
        Outbox(settings.data_dir / OUTBOX_FILE),
        SenderMetrics(metrics_.registry),
        batch_size=settings.usage_batch_size,
    )
    await sender.start()
    def engine_at(address: str) -> EngineClient | None:
        member = state.fleet.member(address)
        return member.client if member is not None else None

    confirmer = UsageConfirmer(engine_at)
    confirmer.start()
    state.usage = sender
    state.usage_source = source
    state.caller = f"{source}/{incarnation}"

    async def persist(outcome: Outcome) -> None:
        await sender.persist(usage_event(outcome, source))
        confirmer.add(outcome.engine_address, outcome.engine_request_ids)

    state.extra_sinks.append(persist)
    recoveries: set[asyncio.Task] = set()

    async def recover(member: EngineMember) -> None:
        """Each engine, once reachable: what earlier incarnations of ours left unconfirmed there."""
        task = asyncio.current_task()
        recoveries.add(task)
        try:
            await recover_unconfirmed(member.client, sender, confirmer, source, incarnation)
        finally:
            recoveries.discard(task)

    state.fleet.on_first_healthy.append(recover)
    log.info("usage events go to %s as source %s (incarnation %s)", settings.metering_addr, source, incarnation)
    return sender, confirmer, recoveries


def _freeze_startup_heap() -> None:
    """Moves what startup allocated out of the collector's reach, so full collections stay short while serving."""
    gc.collect()
    gc.freeze()


def create_app(settings: GatewaySettings, engine: EngineClient | None = None) -> FastAPI:
    """The engine clients are created here (inside the app's lifetime); a passed-in one (tests) is used
    for its address."""
    keys = ApiKeys.parse(settings.api_keys, settings.api_keys_file)
    if keys.open:
        log.warning("no API keys configured: the gateway is open to anyone who can reach it")
    access = AccessPolicy(keys, [k.strip() for k in settings.admin_key_ids.split(",") if k.strip()], settings.metrics_open)
    metrics_ = GatewayMetrics()
    in_flight = InFlight(settings.max_in_flight, metrics_)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        fleet = EngineFleet(
            split_targets(settings.engine_addr), settings.service_token(), settings.engine_poll_seconds,
            clients={engine.address: engine} if engine is not None else None,
        )
        manager = ModelManager(fleet, Catalog(settings.data_dir / CATALOG_FILE))
        state = GatewayState(
            settings=settings, fleet=fleet, metrics=metrics_, in_flight=in_flight, models=manager,
            keys_open=keys.open,
        )
        app.state.gateway = state
        delivery = await _start_usage_delivery(settings, metrics_, state) if settings.metering_addr else None
        # The first poll: which engines answer, and what they serve (and the recoveries it starts).
        await fleet.start()
        if any(m.healthy for m in fleet.members):
            await manager.reconcile()
            metrics_.known_models.update(uid for m in fleet.members for uid in m.cards)
        else:
            log.info("no engine at %s answers yet; they join when they do", settings.engine_addr)
        _freeze_startup_heap()
        yield
        if state.settling:
            await asyncio.wait(state.settling, timeout=settings.settle_timeout_seconds)
        if delivery is not None:
            sender, confirmer, recoveries = delivery
            for task in list(recoveries):
                task.cancel()
            await asyncio.gather(*recoveries, return_exceptions=True)
            await confirmer.stop()
            await sender.stop(settings.usage_drain_seconds)
        await fleet.close()

    app = FastAPI(title="llmserve gateway", version="1", lifespan=lifespan)
    # Model management first: its DELETE /v1/models/{uid} and POST /v1/models sit beside the OpenAI GETs.
    for module in (model_management, chat, completions, models, tokenize, health, metrics):
        app.include_router(module.router)
    _install_error_handlers(app)
    if tracing_configured():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="health,metrics")
    app.add_middleware(
        RequestLimits,
        metrics=metrics_,
        access=access,
        max_body_bytes=settings.max_body_bytes,
        in_flight=in_flight,
    )
    return app

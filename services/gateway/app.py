"""Builds the gateway's FastAPI app: routers, error handlers, limits, and the engine channel's lifetime."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.contracts.engine_client import EngineClient
from services.contracts.metering_client import MeteringClient
from services.gateway.access import AccessPolicy
from services.gateway.anthropic_api import api_router as messages
from services.gateway.auth import ApiKeys
from services.gateway.config import GatewaySettings
from services.gateway.errors import ApiError
from services.gateway.fleet.catalog import CATALOG_FILE, Catalog
from services.gateway.fleet.engines import EngineFleet, split_targets
from services.gateway.fleet.manager import ModelManager
from services.gateway.fleet.router import RequestRouter
from services.gateway.issued_keys import IssuedKeys
from services.gateway.limits.keeper import LimitsKeeper, LimitsSettings
from services.gateway.limits.price_book import PriceBook
from services.gateway.metrics import GatewayMetrics
from services.gateway.middleware import InFlight, RequestLimits, RouteTable
from services.gateway.openai_api.chat import api_router as chat
from services.gateway.openai_api.completions import api_router as completions
from services.gateway.openai_api.embeddings import api_router as embeddings
from services.gateway.openai_api.images import ImagePolicy
from services.gateway.openai_api.lora import api_router as lora
from services.gateway.openai_api.models import api_router as models
from services.gateway.openai_api.protocol import InvalidText, UnsupportedFields
from services.gateway.openai_api.respond import Responder
from services.gateway.openai_api.tokenize import api_router as tokenize
from services.gateway.ops import accounts as account_routes
from services.gateway.ops import exposition, health
from services.gateway.ops import keys as key_routes
from services.gateway.ops import limits as limit_routes
from services.gateway.ops import prices as price_routes
from services.gateway.responses_api import api_router as responses
from services.gateway.scoring_api import api_router as scoring
from services.gateway.streaming.open_generations import OpenGenerations
from services.gateway.usage.delivery import DeliverySettings, UsageDelivery
from services.gateway.usage.recorder import OutcomeRecorder
from services.gateway.xinference_api import model_management
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
        return ApiError(
            400, f"{param}: not valid Unicode text (it holds a lone surrogate)", param=param, code="invalid_value"
        )
    location = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(location) or None
    message = first.get("msg", "Invalid request.").removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body_for(request.url.path), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = _validation_error(exc)
        return JSONResponse(error.body_for(request.url.path), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ApiError(exc.status_code, str(exc.detail))
        return JSONResponse(error.body_for(request.url.path), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        error = ApiError(500, "Internal server error.", code="internal_error")
        return JSONResponse(error.body_for(request.url.path), status_code=500)


def _usage_delivery(settings: GatewaySettings, metrics: GatewayMetrics, fleet: EngineFleet) -> UsageDelivery:
    def engine_at(address: str) -> EngineClient | None:
        member = fleet.member(address)
        return member.client if member is not None else None

    delivery_settings = DeliverySettings(
        metering_addr=settings.metering_addr,
        token=settings.service_token(),
        data_dir=settings.data_dir,
        source=settings.source_id(),
        batch_size=settings.usage_batch_size,
        drain_seconds=settings.usage_drain_seconds,
    )

    def engines() -> list[EngineClient]:
        return [m.client for m in fleet.members if m.healthy]

    return UsageDelivery(delivery_settings, metrics.registry, engine_at, engines)


def _limits_keeper(
    settings: GatewaySettings, source: str, metrics: GatewayMetrics, issued: IssuedKeys | None
) -> LimitsKeeper:
    metering = MeteringClient(settings.metering_addr, settings.service_token())
    return LimitsKeeper(
        metering,
        LimitsSettings(
            source=source,
            lease_seconds=settings.limits_lease_seconds,
            poll_seconds=settings.limits_poll_seconds,
            fail_open=settings.limits_fail_open,
            known_limits_file=settings.data_dir / "known-limits.json",
        ),
        on_poll=metrics.limits_polls.inc,
        levels=issued.levels if issued is not None else None,
    )


def _image_policy(settings: GatewaySettings) -> ImagePolicy:
    return ImagePolicy(
        max_bytes=settings.image_max_bytes,
        fetch=settings.image_fetch,
        allowed_hosts=frozenset(h.strip().lower() for h in settings.image_allowed_hosts.split(",") if h.strip()),
        allow_private=settings.image_allow_private_addresses,
        timeout_seconds=settings.image_fetch_timeout_seconds,
        max_redirects=settings.image_max_redirects,
        max_pixels=settings.image_max_pixels,
        max_side=settings.image_max_side,
    )


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
    metrics_ = GatewayMetrics()
    # Keys metering issues work beside the configured ones (which an operator needs to issue any).
    issued = None
    if settings.metering_addr and not keys.open:
        issued = IssuedKeys(known_file=settings.data_dir / "known-keys.pb", connected_gauge=metrics_.keys_watch)
    access = AccessPolicy(
        keys, [k.strip() for k in settings.admin_key_ids.split(",") if k.strip()], settings.metrics_open, issued
    )
    in_flight = InFlight(settings.max_in_flight, metrics_)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        fleet = EngineFleet(
            split_targets(settings.engine_addr),
            settings.service_token(),
            settings.engine_poll_seconds,
            clients={engine.address: engine} if engine is not None else None,
            multiplexed=settings.multiplex_engine_streams,
        )
        manager = ModelManager(fleet, Catalog((settings.catalog_dir or settings.data_dir) / CATALOG_FILE))
        delivery = _usage_delivery(settings, metrics_, fleet) if settings.metering_addr else None
        limits = _limits_keeper(settings, delivery.source, metrics_, issued) if delivery is not None else None
        generations = OpenGenerations()
        router = RequestRouter(fleet, generations, settings.request_timeout_seconds, settings.settle_timeout_seconds)
        recorder = OutcomeRecorder(metrics_, delivery, limits)
        app.state.settings = settings
        app.state.access = access
        app.state.metrics = metrics_
        app.state.in_flight = in_flight
        app.state.image_policy = _image_policy(settings)
        app.state.fleet = fleet
        app.state.models = manager
        app.state.usage = delivery
        app.state.recorder = recorder
        app.state.generations = generations
        app.state.router = router
        app.state.limits = limits
        app.state.issued_keys = issued
        app.state.key_admin = MeteringClient(settings.metering_addr, settings.service_token()) if issued else None
        prices = None
        if delivery is not None:
            prices = PriceBook(
                MeteringClient(settings.metering_addr, settings.service_token()), settings.limits_poll_seconds
            )
        app.state.prices = prices
        if issued is not None:
            # A change in metering (a key, a limit, a team, a price) reaches this gateway through the key watch.
            followers = [f for f in (limits, prices) if f is not None]

            def changed() -> None:
                for follower in followers:
                    follower.poke()

            issued.on_change = changed
            issued.start(app.state.key_admin)
        app.state.responder = Responder(
            router,
            recorder,
            metrics_,
            generations,
            settings.force_include_usage,
            limits,
            settings.share_prefix_cache,
            access,
            prices,
        )
        if limits is not None:
            await limits.start()
        if prices is not None:
            await prices.start()
        if delivery is not None:
            await delivery.start()
            # Each engine, once reachable: what earlier incarnations of this gateway left unconfirmed there.
            fleet.on_first_healthy.append(lambda member: delivery.recover(member.client))
        # The first poll: which engines answer, and what they serve (and the recoveries it starts).
        await fleet.start()
        if any(m.healthy for m in fleet.members):
            await manager.reconcile()
            metrics_.known_models.update(uid for m in fleet.members for uid in m.cards)
        else:
            log.info("no engine at %s answers yet; they join when they do", settings.engine_addr)
        _freeze_startup_heap()
        yield
        await generations.wait_settled(settings.settle_timeout_seconds)
        if limits is not None:
            await limits.stop()
        if prices is not None:
            await prices.stop()
        if issued is not None:
            await issued.stop()
            await app.state.key_admin.close()
        if delivery is not None:
            await delivery.stop()
        await fleet.close()

    app = FastAPI(title="llmserve gateway", version="1", lifespan=lifespan)
    # No redirect to the slashed path: its Location would echo the client's Host header.
    app.router.redirect_slashes = False
    # Model management first: its DELETE /v1/models/{uid} and POST /v1/models sit beside the OpenAI GETs.
    routers = (model_management, chat, completions, embeddings, models, tokenize, lora)
    routers += (limit_routes, key_routes, account_routes, price_routes, health)
    for module in (*routers, exposition):
        app.include_router(module.router)
    app.include_router(messages.router)
    app.include_router(responses.router)
    app.include_router(scoring.router)
    app.include_router(messages.counting)
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
        routes=RouteTable(app.routes),
        body_timeout_seconds=settings.body_timeout_seconds,
    )
    return app

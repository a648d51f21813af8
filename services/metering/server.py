"""Builds the metering grpc.aio server, its HTTP port (metrics, /health) and the outbox deliveries, and runs
them until SIGTERM."""

from __future__ import annotations

import asyncio
import logging

from llmserve.metering.v1 import metering_pb2, metering_pb2_grpc

from services.grpc_lifecycle import build_server, shut_down, wait_for_stop_signal
from services.metering import webhook_signature
from services.metering.cloudevents import CONTENT_TYPE
from services.metering.config import MeteringSettings
from services.metering.delivery import Deliverer, OutboxWatch, Target, check_budgets
from services.metering.key_watch import LISTENING_POLL_SECONDS, POLL_SECONDS, KeyWatch
from services.metering.ledger import Ledger
from services.metering.metrics import MeteringMetrics
from services.metering.outbox_store import ALERTS, CLOUDEVENTS
from services.metering.servicer import STATUS_BY_ERROR, MeteringServicer
from services.metering.sqlite_store import SqliteStore
from services.metering.status_http import start_status_server
from services.metering.store import UsageStore
from services.service_auth import ADMIN, ENGINE, GATEWAY, interceptor_from_file

log = logging.getLogger(__name__)

SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name

# The gateway records usage; only an admin reads it back (every tenant's totals are in there).
POLICY = {
    # Gateways record their requests' usage; the engine records that of callers that do not bill their own.
    **{f"/{SERVICE_NAME}/{method}": frozenset({GATEWAY, ENGINE}) for method in ("RecordUsage", "StreamUsage")},
    **{
        f"/{SERVICE_NAME}/{method}": frozenset({ADMIN})
        for method in ("GetTotals", "GetUsageSeries", "GetCounters", "GetThroughput")
    },
    # Gateways enforce the limits (and relay their admins' changes); an admin reads and sets them too.
    **{f"/{SERVICE_NAME}/{method}": frozenset({GATEWAY}) for method in ("Reserve", "Settle", "RenewLease")},
    **{
        f"/{SERVICE_NAME}/{method}": frozenset({GATEWAY, ADMIN})
        for method in ("SetLimits", "ListLimits", "GetStanding")
    },
    # Gateways relay their admins' key changes and keep every key's hash from the watch; an admin (the CLI)
    # manages keys. Nobody can read a secret back: metering never kept it.
    **{
        f"/{SERVICE_NAME}/{method}": frozenset({GATEWAY, ADMIN})
        for method in (
            *("CreateKey", "ListKeys", "GetKey", "UpdateKey", "RotateKey", "RevokeKey"),
            *("CreateOrganization", "ListOrganizations", "GetOrganization"),
            *("CreateTeam", "UpdateTeam", "ListTeams", "GetTeam"),
            *("ImportPrices", "ListPrices"),
        )
    },
    f"/{SERVICE_NAME}/WatchKeys": frozenset({GATEWAY}),
}


def open_store(settings: MeteringSettings) -> UsageStore:
    """SQLite in data_dir, or PostgreSQL when a database URL is set (imported only then)."""
    if not settings.database_url:
        return SqliteStore(settings.sqlite_path)
    from services.metering.postgres_store import PostgresStore

    return PostgresStore(settings.database_url)


def _deliveries(settings: MeteringSettings, ledger: Ledger, metrics: MeteringMetrics) -> list[Deliverer]:
    secret = None
    if settings.webhook_secret_file is not None:
        secret = webhook_signature.secret_key(settings.webhook_secret_file.read_text())
    targets = []
    if settings.export_url:
        targets.append(Target(CLOUDEVENTS, settings.export_url, CONTENT_TYPE, settings.export_commits_per_post))
    if settings.alert_url:
        targets.append(Target(ALERTS, settings.alert_url, "application/json", 1))
    return [
        Deliverer(
            ledger, target, metrics, secret, settings.delivery_timeout_seconds, settings.delivery_max_backoff_seconds
        )
        for target in targets
    ]


async def serve(settings: MeteringSettings) -> None:
    metrics = MeteringMetrics(settings.max_model_labels)
    store = await asyncio.to_thread(open_store, settings)
    ledger = Ledger(
        store,
        metrics,
        settings.max_event_age_seconds,
        settings.max_future_seconds,
        retention_seconds=settings.event_retention_seconds or None,
    )
    await ledger.start()
    deliverers = _deliveries(settings, ledger, metrics)
    for deliverer in deliverers:
        await ledger.change(UsageStore.enable_delivery, kind=deliverer.kind)
    outbox = OutboxWatch(ledger, metrics)
    background = [asyncio.create_task(outbox.run()), *(asyncio.create_task(d.run()) for d in deliverers)]
    if settings.alert_url:
        background.append(asyncio.create_task(check_budgets(ledger, settings.alert_check_seconds)))
    # On PostgreSQL the other replicas' key changes wake the watch at once (LISTEN); it polls less often.
    listening = bool(settings.database_url)
    keys = KeyWatch(ledger, poll_seconds=LISTENING_POLL_SECONDS if listening else POLL_SECONDS)
    keys.start()
    listener = None
    if listening:
        from services.metering.key_changes import ChangeListener

        loop = asyncio.get_running_loop()
        listener = ChangeListener(settings.database_url, lambda: loop.call_soon_threadsafe(keys.poke))
        listener.start()
    servicer = MeteringServicer(ledger, keys, settings.unpriced == "refuse")
    metering = build_server(
        f"{settings.host}:{settings.port}",
        lambda server: metering_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, server),
        [SERVICE_NAME],
        STATUS_BY_ERROR,
        auth=interceptor_from_file(settings.callers_file, POLICY, metrics.auth_failures, "metering"),
        reflection_enabled=settings.reflection,
    )
    start_status_server(settings.host, settings.metrics_port, metrics.registry, outbox.health)
    await metering.server.start()
    await metering.set_serving(True)
    log.info(
        "metering on port %d (metrics on %d), store %s",
        metering.port,
        settings.metrics_port,
        settings.store_description,
    )
    await wait_for_stop_signal()

    async def drain() -> None:
        pass

    # In-flight RecordUsage calls finish (and commit) within the grace period; then the store closes.
    await shut_down(metering, drain, settings.shutdown_grace_seconds)
    await keys.stop()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if listener is not None:
        await asyncio.to_thread(listener.stop)
    await ledger.stop()

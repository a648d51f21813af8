"""The hand-off of a finished request's usage: its event is made durable in the outbox (before the
response's last byte), the sender delivers the outbox to metering, and the engine that held the usage is
told it may forget it. What an earlier process of this gateway left unconfirmed is claimed back from
each engine once it answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmserve.engine.v1 import engine_pb2 as pb
from prometheus_client import CollectorRegistry

from services.contracts.engine_client import EngineClient
from services.contracts.metering_client import MeteringClient
from services.gateway.outcome import Outcome
from services.gateway.usage.events import usage_context, usage_event
from services.usage_outbox.outbox import OUTBOX_FILE, Outbox
from services.gateway.usage.recovery import UsageConfirmer, new_incarnation, recover_unconfirmed
from services.usage_outbox.sender import SenderMetrics, UsageSender

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliverySettings:
    metering_addr: str
    token: str | None
    data_dir: Path
    # Names this gateway in usage events (idempotency is per source + event id).
    source: str
    batch_size: int
    drain_seconds: float


class UsageDelivery:
    def __init__(
        self, settings: DeliverySettings, registry: CollectorRegistry, engine_at: Callable[[str], EngineClient | None]
    ) -> None:
        self._settings = settings
        self.source = settings.source
        self.incarnation = new_incarnation()
        # The name the engine holds usage under until it is confirmed.
        self.caller = f"{self.source}/{self.incarnation}"
        self._sender = UsageSender(
            MeteringClient(settings.metering_addr, settings.token),
            Outbox(settings.data_dir / OUTBOX_FILE),
            SenderMetrics(registry),
            batch_size=settings.batch_size,
        )
        self._confirmer = UsageConfirmer(engine_at)
        self._recoveries: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self._sender.start()
        self._confirmer.start()
        log.info(
            "usage events go to %s as source %s (incarnation %s)",
            self._settings.metering_addr, self.source, self.incarnation,
        )

    def stamp(self, requests: list[pb.GenerateRequest], outcome: Outcome) -> None:
        """Has the engine hold each call's usage for this gateway, with the event it would bill."""
        context = usage_context(outcome, self.source).SerializeToString()
        for request in requests:
            request.caller = self.caller
            request.usage_context = context

    async def record(self, outcome: Outcome) -> None:
        """Returns once the request's usage event is durable."""
        await self._sender.persist(usage_event(outcome, self.source))
        self._confirmer.add(outcome.engine_address, outcome.engine_request_ids)

    async def recover(self, engine: EngineClient) -> None:
        """What earlier incarnations of this gateway left unconfirmed on `engine` (once it is reachable)."""
        task = asyncio.current_task()
        self._recoveries.add(task)
        try:
            await recover_unconfirmed(engine, self._sender, self._confirmer, self.source, self.incarnation)
        finally:
            self._recoveries.discard(task)

    @property
    def healthy(self) -> bool:
        return self._sender.healthy

    @property
    def pending(self) -> int:
        return self._sender.pending

    @property
    def outbox_error(self) -> str:
        return self._sender.outbox_error

    async def stop(self) -> None:
        for task in list(self._recoveries):
            task.cancel()
        await asyncio.gather(*self._recoveries, return_exceptions=True)
        await self._confirmer.stop()
        await self._sender.stop(self._settings.drain_seconds)

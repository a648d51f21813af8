"""The hand-off of a finished request's usage: its event is made durable in the outbox (before the
response's last byte), the sender delivers the outbox to metering, and once metering acknowledged it the
engine that held the usage is told it may forget it. What an earlier process of this gateway left
unconfirmed is claimed back from each engine once it answers, and what the engines hold for gateways
gone for good (their lease ran out) is claimed by whichever gateway asks first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.metering.v1 import metering_pb2 as mpb
from prometheus_client import CollectorRegistry

from services.contracts.engine_client import EngineClient
from services.contracts.held_usage import holder_name
from services.contracts.metering_client import MeteringClient
from services.gateway.outcome import Outcome
from services.gateway.usage.events import events_from_unconfirmed, usage_context, usage_event
from services.gateway.usage.recovery import UsageConfirmer, new_incarnation, recover_unconfirmed
from services.usage_outbox.outbox import OUTBOX_FILE, Outbox
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
        self,
        settings: DeliverySettings,
        registry: CollectorRegistry,
        engine_at: Callable[[str], EngineClient | None],
        engines: Callable[[], list[EngineClient]] = list,
        claim_every_seconds: float = 5.0,
    ) -> None:
        self._engines = engines
        self._claim_every = claim_every_seconds
        # Event id → the engine calls it covers, confirmed to their engines once metering acknowledged it.
        self._unacknowledged: dict[str, list[tuple[str, list[str]]]] = {}
        self._sweeping: asyncio.Task | None = None
        self._settings = settings
        self.source = settings.source
        self.incarnation = new_incarnation()
        # The name the engine holds usage under until it is confirmed.
        self.caller = holder_name(self.source, self.incarnation)
        self._sender = UsageSender(
            MeteringClient(settings.metering_addr, settings.token),
            Outbox(settings.data_dir / OUTBOX_FILE),
            SenderMetrics(registry),
            batch_size=settings.batch_size,
            on_settled=self._acknowledged,
        )
        self._confirmer = UsageConfirmer(engine_at, caller=self.caller, all_engines=engines)
        self._recoveries: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self._sender.start()
        self._confirmer.start()
        self._sweeping = asyncio.create_task(self._claim_expired_forever())
        log.info(
            "usage events go to %s as source %s (incarnation %s)",
            self._settings.metering_addr,
            self.source,
            self.incarnation,
        )

    def stamp(self, requests: list[pb.GenerateRequest], outcome: Outcome) -> None:
        """Has the engine hold each call's usage for this gateway, with the event it would bill."""
        context = usage_context(outcome, self.source).SerializeToString()
        for request in requests:
            request.caller = self.caller
            request.usage_context = context

    async def record(self, outcome: Outcome) -> None:
        """Returns once the request's usage event is durable."""
        await self._persist(usage_event(outcome, self.source), outcome.engine_address, outcome.engine_request_ids)

    async def _persist(self, event: mpb.UsageEvent, engine_address: str, request_ids: list[str]) -> None:
        self._unacknowledged.setdefault(event.event_id, []).append((engine_address, request_ids))
        await self._sender.persist(event)

    def _acknowledged(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            for address, request_ids in self._unacknowledged.pop(event_id, ()):
                self._confirmer.add(address, request_ids)

    async def _claim_expired_forever(self) -> None:
        while True:
            await asyncio.sleep(self._claim_every)
            for engine in self._engines():
                try:
                    await self.claim_expired(engine)
                except grpc.aio.AioRpcError as error:
                    log.debug("could not claim expired usage from %s: %s", engine.address, error.code().name)

    async def claim_expired(self, engine: EngineClient) -> int:
        """What `engine` holds for gateways whose lease ran out: billed from here under their events' ids
        (metering counts an event it already has once)."""
        answer = await engine.claim_expired_usage(self.caller, timeout=10.0)
        events = events_from_unconfirmed(list(answer.usage))
        for event, request_ids in events:
            await self._persist(event, engine.address, request_ids)
        if events:
            log.info("claimed the usage of %d request(s) held for gateways gone from %s", len(events), engine.address)
        return len(events)

    async def recover(self, engine: EngineClient) -> None:
        """What earlier incarnations of this gateway left unconfirmed on `engine` (once it is reachable)."""
        task = asyncio.current_task()
        self._recoveries.add(task)
        try:
            await recover_unconfirmed(engine, self._persist, self._confirmer, self.source, self.incarnation)
        finally:
            self._recoveries.discard(task)

    @property
    def healthy(self) -> bool:
        return self._sender.healthy

    @property
    def pending(self) -> int:
        return self._sender.pending

    @property
    def dead_letters(self) -> int:
        return self._sender.dead_letters

    @property
    def outbox_error(self) -> str:
        return self._sender.outbox_error

    async def stop(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
        for task in list(self._recoveries):
            task.cancel()
        await asyncio.gather(*self._recoveries, return_exceptions=True)
        await self._confirmer.stop()
        await self._sender.stop(self._settings.drain_seconds)

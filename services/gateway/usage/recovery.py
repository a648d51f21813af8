"""The gateway's half of the engine's hold on usage (services.engine.usage.held).

The gateway sends each engine call as "<source>/<incarnation>" with the event it would bill. Once
metering has acknowledged the event (not merely once it is in this gateway's outbox, which a replaced
replica loses with its volume), the call's id goes to the confirmer, which tells the engine in batches
(the engine then forgets it); each round also renews this gateway's lease on every engine. At start, a
new incarnation claims what earlier ones never confirmed; and every few seconds any gateway claims what
the engine holds for callers whose lease ran out (a replica gone for good). Metering's idempotency on
(source, event id) makes a replay of an event that did reach it count once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import grpc
from llmserve.metering.v1 import metering_pb2 as mpb

from services.contracts.engine_client import EngineClient
from services.gateway.usage.events import events_from_unconfirmed

log = logging.getLogger(__name__)


def new_incarnation() -> str:
    return uuid.uuid4().hex[:12]


class UsageConfirmer:
    """Confirms engine request ids in batches, each to the engine that ran it; ids whose confirmation
    failed are tried again (the engine keeps them meanwhile). Every round also renews this gateway's
    lease on every engine (a confirmation with no ids is a heartbeat)."""

    def __init__(
        self,
        engines: Callable[[str], EngineClient | None],
        interval: float = 0.5,
        caller: str = "",
        all_engines: Callable[[], list[EngineClient]] = list,
    ) -> None:
        self._engines = engines
        self._all_engines = all_engines
        self._caller = caller
        self._interval = interval
        self._ids: dict[str, list[str]] = {}
        self._task: asyncio.Task | None = None

    def add(self, address: str, request_ids: list[str]) -> None:
        self._ids.setdefault(address, []).extend(request_ids)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        pending, self._ids = self._ids, {}
        for engine in self._all_engines():
            pending.setdefault(engine.address, [])
        for address, batch in pending.items():
            engine = self._engines(address)
            if engine is None:
                # The engine left the fleet; what it held is claimed if it comes back.
                log.warning("engine %s is gone: %d usage confirmation(s) dropped", address, len(batch))
                continue
            try:
                await engine.confirm_usage(batch, timeout=5.0, caller=self._caller)
            except grpc.aio.AioRpcError as error:
                # Kept by the engine meanwhile; confirmed later (or claimed by our next incarnation).
                log.debug("could not confirm %d usage record(s) to %s: %s", len(batch), address, error.code().name)
                if batch:
                    self._ids.setdefault(address, [])[:0] = batch

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()


async def recover_unconfirmed(
    engine: EngineClient,
    persist: Callable[[mpb.UsageEvent, str, list[str]], Awaitable[None]],
    confirmer: UsageConfirmer,
    source: str,
    incarnation: str,
    patience_seconds: float = 60.0,
) -> int:
    """Claims and records what earlier incarnations of this source left unconfirmed; returns how many
    events. Streams of theirs that the engine is still aborting are waited for, up to the patience."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_seconds
    recovered = 0
    claimed: set[str] = set()
    while True:
        try:
            answer = await engine.claim_usage(source, incarnation, timeout=10.0)
        except grpc.aio.AioRpcError as error:
            if loop.time() > deadline:
                log.error("could not claim unconfirmed usage from the engine: %s", error.code().name)
                return recovered
            await asyncio.sleep(1.0)
            continue
        fresh = [held for held in answer.usage if held.request_id not in claimed]
        for event, request_ids in events_from_unconfirmed(fresh):
            await persist(event, engine.address, request_ids)
            claimed.update(request_ids)
            recovered += 1
        await confirmer.flush()
        if not answer.still_open or loop.time() > deadline:
            if answer.still_open:
                log.warning(
                    "%d stream(s) of an earlier incarnation still open; left for the next start", answer.still_open
                )
            break
        await asyncio.sleep(0.5)
    if recovered:
        log.info("recovered the usage of %d request(s) an earlier gateway process did not record", recovered)
    return recovered

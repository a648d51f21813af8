"""Delivers usage events to the metering service without ever slowing a response.

Events go to a bounded in-memory queue. One sender task sends them in batches; an event leaves
only when the metering service acknowledged it (recorded, duplicate, or rejected for good). When
sending fails, the batch and every event that arrives meanwhile spill to the on-disk outbox, which
is retried with backoff, oldest first, before newer events; it outlives restarts."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
from llmserve.metering.v1 import metering_pb2 as mpb
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.gateway.outbox import Outbox
from services.metering.client import MeteringClient

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Statuses after which a retry could succeed; anything else rejected the batch for good.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "gateway_usage_events",
            "Usage events by what happened to them: queued, sent, spooled, duplicate, rejected, dropped",
            ["outcome"],
            registry=registry,
        )
        self.spool_depth = Gauge("gateway_usage_spool_depth", "Usage events waiting in the on-disk outbox", registry=registry)
        for outcome in ("queued", "sent", "spooled", "duplicate", "rejected", "dropped"):
            self.events.labels(outcome)


class UsageSender:
    def __init__(
        self,
        client: MeteringClient,
        outbox: Outbox,
        metrics: SenderMetrics,
        queue_size: int = 10_000,
        batch_size: int = 500,
        send_timeout: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._client = client
        self._outbox = outbox
        self._metrics = metrics
        self._queue: asyncio.Queue[mpb.UsageEvent] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._send_timeout = send_timeout
        self._max_backoff = max_backoff
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._task: asyncio.Task | None = None
        self._spooled = 0
        # A batch taken from memory and not yet answered: spooled if the sender is stopped mid-send.
        self._in_flight: list[mpb.UsageEvent] = []

    async def _disk(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        self._spooled = await self._disk(self._outbox.count)
        self._metrics.spool_depth.set(self._spooled)
        if self._spooled:
            log.info("%d usage event(s) waiting in the outbox from before", self._spooled)
        self._task = asyncio.create_task(self._run())

    def submit(self, event: mpb.UsageEvent) -> None:
        """Never blocks the caller: a full queue goes straight to the outbox."""
        self._metrics.events.labels("queued").inc()
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # The outbox's own thread writes it (in order with the sender's other disk work).
            self._executor.submit(self._outbox.add, [(event.event_id, event.SerializeToString())])
            self._note_spooled(1)

    @property
    def pending(self) -> int:
        return self._queue.qsize() + self._spooled

    def _note_spooled(self, count: int) -> None:
        self._spooled += count
        self._metrics.events.labels("spooled").inc(count)
        self._metrics.spool_depth.set(self._spooled)

    async def _spool(self, events: list[mpb.UsageEvent]) -> None:
        if events:
            await self._disk(self._outbox.add, [(e.event_id, e.SerializeToString()) for e in events])
            self._note_spooled(len(events))

    def _take_memory(self) -> list[mpb.UsageEvent]:
        batch = []
        while len(batch) < self._batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _send(self, events: list[mpb.UsageEvent]) -> bool:
        """True when every event got its final answer; False when the batch should be retried."""
        try:
            acks = await self._client.record(events, timeout=self._send_timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRYABLE:
                log.debug("metering unavailable (%s); will retry", error.code().name)
                return False
            log.error("metering refused a batch of %d: %s %s", len(events), error.code().name, error.details())
            self._metrics.events.labels("rejected").inc(len(events))
            return True
        for ack in acks:
            if ack.status == mpb.ACK_STATUS_RECORDED:
                self._metrics.events.labels("sent").inc()
            elif ack.status == mpb.ACK_STATUS_DUPLICATE:
                self._metrics.events.labels("duplicate").inc()
            else:
                log.error("metering rejected usage event %s: %s", ack.event_id, ack.reason)
                self._metrics.events.labels("rejected").inc()
        return True

    async def _send_spooled(self) -> bool:
        rows = await self._disk(self._outbox.oldest, self._batch_size)
        if not rows:
            self._spooled = 0
            self._metrics.spool_depth.set(0)
            return True
        events = [mpb.UsageEvent.FromString(payload) for _, payload in rows]
        if not await self._send(events):
            return False
        await self._disk(self._outbox.remove, [event_id for event_id, _ in rows])
        self._spooled = max(0, self._spooled - len(rows))
        self._metrics.spool_depth.set(self._spooled)
        return True

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            if self._spooled:
                ok = await self._send_spooled()
            else:
                batch = self._take_memory()
                if not batch:
                    batch = [await self._queue.get()]
                    batch += self._take_memory()
                self._in_flight = batch
                ok = await self._send(batch)
                if not ok:
                    await self._spool(batch)
                self._in_flight = []
            if ok:
                backoff = 0.1
                continue
            await self._wait_spooling(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self._max_backoff)

    async def _wait_spooling(self, seconds: float) -> None:
        """Backs off; what arrives meanwhile goes to disk, so memory stays small while metering is down."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                first = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                return
            await self._spool([first, *self._take_memory()])

    async def stop(self, grace_seconds: float) -> None:
        """Delivers what it can within the grace period; the rest stays (or goes) on disk."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        left = self._in_flight + self._take_memory()
        self._in_flight = []
        while left:
            await self._spool(left)
            left = self._take_memory()
        if self.pending:
            log.warning("%d usage event(s) kept in the outbox for the next start", self.pending)
        await self._disk(self._outbox.close)
        self._executor.shutdown()
        await self._client.close()

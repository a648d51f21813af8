"""Delivers usage events to the metering service, durably and without dropping any.

`persist()` returns once the event is committed to the on-disk outbox: a response's last byte (the
gateway's) or a stream's final message (the engine's) leaves only after that, so a process killed at any
moment after it answered still has the event. Events that arrive
while a commit is under way are committed together by the next one (group commit: one fsync for many).
One sender task sends the outbox's oldest events in batches and removes each once metering acknowledged
it; events metering refuses for good go to the dead-letter table (metric, log line;
`python -m services.gateway.usage.admin` lists and replays them). Metering down means retries with backoff;
nothing is dropped.

If the outbox cannot be written (disk full, I/O error), events are held in memory and sent from there,
and `<prefix>_usage_outbox_healthy` (and the gateway's /health) say so until a write succeeds again."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError
from llmserve.metering.v1 import metering_pb2 as mpb
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.contracts.metering_client import MeteringClient
from services.usage_outbox.outbox import Outbox

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Statuses after which a retry could succeed; anything else refused the batch for good.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}
# Metering refused this service's credential: a configuration to fix, not events to bury; they wait.
_CREDENTIAL_REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
_OUTCOMES = ("persisted", "held_in_memory", "sent", "duplicate", "dead_lettered")
# With nothing to send, the sender still looks at the outbox this often (dead letters replayed by an operator).
_IDLE_POLL_SECONDS = 5.0


class SenderMetrics:
    """Named `<prefix>_usage_*`: `gateway_usage_*` in the gateway, `engine_usage_*` in the engine."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "gateway") -> None:
        self.events = Counter(
            f"{prefix}_usage_events",
            "Usage events by what happened to them: persisted, held_in_memory (outbox failing), sent, duplicate,"
            " dead_lettered",
            ["outcome"],
            registry=registry,
        )
        # The multiprocess modes apply only in prometheus_client's multiprocess mode (the gateway's workers):
        # depths summed over live workers; healthy only if every live worker's outbox is.
        self.spool_depth = Gauge(
            f"{prefix}_usage_spool_depth",
            "Usage events in the outbox (or held in memory) not yet acknowledged",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.dead_letters = Gauge(
            f"{prefix}_usage_dead_letters",
            "Usage events metering refused, kept for replay",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.outbox_healthy = Gauge(
            f"{prefix}_usage_outbox_healthy",
            "1 while the outbox accepts writes",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.errors = Counter(
            f"{prefix}_usage_sender_errors",
            "Failures of the outbox or the sender loop, by kind",
            ["kind"],
            registry=registry,
        )
        for outcome in _OUTCOMES:
            self.events.labels(outcome)
        self.outbox_healthy.set(1)


class UsageSender:
    def __init__(
        self,
        client: MeteringClient,
        outbox: Outbox,
        metrics: SenderMetrics,
        batch_size: int = 500,
        send_timeout: float = 5.0,
        max_backoff: float = 5.0,
        on_settled: Callable[[list[str]], None] | None = None,
    ) -> None:
        # Called with the ids of events metering gave its final answer for (recorded, duplicate, refused).
        self._on_settled = on_settled
        self._client = client
        self._outbox = outbox
        self._metrics = metrics
        self._batch_size = batch_size
        self._send_timeout = send_timeout
        self._max_backoff = max_backoff
        # One thread owns the SQLite connection: commits, reads and removals stay in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._task: asyncio.Task | None = None
        self._waiting: list[tuple[mpb.UsageEvent, asyncio.Future[None]]] = []
        self._committing: asyncio.Task | None = None
        self._held: dict[str, mpb.UsageEvent] = {}
        self._wake = asyncio.Event()
        self._spooled = 0
        self.outbox_error = ""
        # Events metering refused (they are never billed), kept in the outbox's dead-letter table.
        self.dead_letters = 0

    async def _disk(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        self._spooled = await self._disk(self._outbox.count)
        self._metrics.spool_depth.set(self._spooled)
        await self._count_dead_letters()
        if self._spooled:
            log.info("%d usage event(s) waiting in the outbox from before", self._spooled)
        self._task = asyncio.create_task(self._run())

    @property
    def pending(self) -> int:
        return self._spooled + len(self._held) + len(self._waiting)

    @property
    def healthy(self) -> bool:
        return not self.outbox_error and self._task is not None and not self._task.done()

    async def persist(self, event: mpb.UsageEvent) -> None:
        """Returns once the event is committed to the outbox (or, with the outbox failing, held in memory)."""
        # Shielded: a caller cancelled meanwhile does not cancel the commit its event is part of.
        await asyncio.shield(self.submit(event))

    def submit(self, event: mpb.UsageEvent) -> asyncio.Future[None]:
        """Queues the event for the next commit and returns at once (for a caller that cannot wait: one
        being cancelled); the future is done once it is committed."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((event, done))
        if self._committing is None:
            self._committing = asyncio.create_task(self._commit_waiting())
        return done

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                events = [event for event, _ in batch]
                try:
                    await self._disk(self._outbox.add, [(e.event_id, e.SerializeToString()) for e in events])
                except Exception as error:  # sqlite3.Error, OSError: disk full, I/O error, locked
                    self._outbox_failed(error)
                    self._held.update((e.event_id, e) for e in events)
                    self._metrics.events.labels("held_in_memory").inc(len(events))
                else:
                    self._outbox_recovered()
                    self._spooled += len(events)
                    self._metrics.events.labels("persisted").inc(len(events))
                self._metrics.spool_depth.set(self.pending)
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
                self._wake.set()
        finally:
            self._committing = None

    def _outbox_failed(self, error: BaseException) -> None:
        if not self.outbox_error:
            log.error("usage outbox cannot be written (%s): holding events in memory until it can", error)
        self.outbox_error = str(error) or error.__class__.__name__
        self._metrics.outbox_healthy.set(0)
        self._metrics.errors.labels("outbox_write").inc()

    def _outbox_recovered(self) -> None:
        if self.outbox_error:
            log.info("usage outbox writable again")
        self.outbox_error = ""
        self._metrics.outbox_healthy.set(1)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                delivered = await self._deliver_once()
            except Exception:  # the loop outlives any one failure: a bad row, a full disk, a bug
                log.exception("usage sender failed a round; retrying")
                self._metrics.errors.labels("sender").inc()
                delivered = False
            if delivered is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), _IDLE_POLL_SECONDS)
                except TimeoutError:
                    # Idle: an operator may have replayed dead letters meanwhile.
                    await self._count_dead_letters()
                continue
            if delivered:
                backoff = 0.1
                continue
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self._max_backoff)

    async def _deliver_once(self) -> bool | None:
        """One batch: True when it got final answers, False to retry later, None when there was nothing."""
        if self._held:
            events = list(self._held.values())[: self._batch_size]
            answered = await self._send(events, from_disk=False)
            if answered:
                for event in events:
                    self._held.pop(event.event_id, None)
                self._metrics.spool_depth.set(self.pending)
            return answered
        rows = await self._disk(self._outbox.oldest, self._batch_size)
        self._spooled = max(self._spooled, len(rows)) if rows else 0
        if not rows:
            self._metrics.spool_depth.set(self.pending)
            return None
        events: list[mpb.UsageEvent] = []
        poison: list[tuple[str, str]] = []
        for event_id, payload in rows:
            try:
                events.append(mpb.UsageEvent.FromString(payload))
            except DecodeError as error:
                poison.append((event_id, f"undecodable outbox row: {error}"))
        if poison:
            await self._bury(poison)
            self._spooled = max(0, self._spooled - len(poison))
        return await self._send(events, from_disk=True) if events else True

    async def _send(self, events: list[mpb.UsageEvent], from_disk: bool) -> bool:
        """True when every event got its final answer (recorded, duplicate or refused); False to retry."""
        try:
            acks = await self._client.record(events, timeout=self._send_timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _RETRYABLE:
                log.debug("metering unavailable (%s); will retry", error.code().name)
                return False
            if error.code() in _CREDENTIAL_REFUSED:
                log.error(
                    "metering refused this service's credential (%s); events stay in the outbox", error.code().name
                )
                self._metrics.errors.labels("credential").inc()
                return False
            reason = f"metering refused the batch: {error.code().name}: {error.details()}"
            refused = [(e.event_id, reason) for e in events]
            acks = []
        else:
            refused = [(a.event_id, a.reason or "rejected") for a in acks if a.status == mpb.ACK_STATUS_REJECTED]
        for ack in acks:
            if ack.status == mpb.ACK_STATUS_RECORDED:
                self._metrics.events.labels("sent").inc()
            elif ack.status == mpb.ACK_STATUS_DUPLICATE:
                self._metrics.events.labels("duplicate").inc()
        if refused:
            if not from_disk:
                # Held in memory because the disk failed: try to keep them as dead letters all the same.
                by_id = {e.event_id: e for e in events}
                await self._disk(self._outbox.add, [(i, by_id[i].SerializeToString()) for i, _ in refused])
            await self._bury(refused)
        if from_disk:
            settled = [e.event_id for e in events if e.event_id not in {i for i, _ in refused}]
            await self._disk(self._outbox.remove, settled)
            self._spooled = max(0, self._spooled - len(events))
            self._metrics.spool_depth.set(self.pending)
        if self._on_settled is not None:
            self._on_settled([e.event_id for e in events])
        return True

    async def _bury(self, failures: list[tuple[str, str]]) -> None:
        for event_id, reason in failures:
            log.error("usage event %s dead-lettered: %s", event_id, reason)
        await self._disk(self._outbox.bury, failures)
        self._metrics.events.labels("dead_lettered").inc(len(failures))
        await self._count_dead_letters()

    async def _count_dead_letters(self) -> None:
        self.dead_letters = await self._disk(self._outbox.dead_letter_count)
        self._metrics.dead_letters.set(self.dead_letters)

    async def stop(self, grace_seconds: float) -> None:
        """Delivers what it can within the grace period; the rest stays on disk for the next start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        while (self.pending or self._committing is not None) and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)
        if self._committing is not None:
            await self._committing
        if self._task is not None:
            self._task.cancel()
            results = await asyncio.gather(self._task, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("usage sender had failed: %r", result)
        if self._held:
            try:
                await self._disk(self._outbox.add, [(e.event_id, e.SerializeToString()) for e in self._held.values()])
                self._held.clear()
            except Exception as error:  # noqa: BLE001 - the disk is still failing; say what is lost
                log.error("%d usage event(s) could not be written at shutdown and are lost: %s", len(self._held), error)
        if self.pending:
            log.warning("%d usage event(s) kept in the outbox for the next start", self.pending)
        await self._disk(self._outbox.close)
        self._executor.shutdown()
        await self._client.close()

"""The ledger: checks events, commits them in groups (one transaction for all that arrive while the
previous commit runs), moves this replica's metrics after each commit, and reads the running totals and
throughput windows back from the store (so every replica of a shared store answers the same)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from services.metering.events import Rejection, UsageEvent, check, clamped
from services.metering.keys import KeyRecord
from services.metering.limits import Decision, KeyLimits, Standing
from services.metering.metrics import MeteringMetrics
from services.metering.store import Commit, ModelTotals, Query, Totals, UsageStore
from services.metering.throughput import WINDOWS, window_rate

_T = TypeVar("_T")
log = logging.getLogger(__name__)

RECORDED, DUPLICATE, REJECTED = "recorded", "duplicate", "rejected"
# Pruning: small batches (each a short write transaction), a pause between them so commits go first.
_PRUNE_BATCH = 2000
_PRUNE_PAUSE_SECONDS = 0.05
_PRUNE_INTERVAL_SECONDS = 60.0
_PRUNE_MARGIN_SECONDS = 86400.0


@dataclass(frozen=True, slots=True)
class Ack:
    event_id: str
    status: str
    reason: str = ""


@dataclass
class _Submission:
    events: list[UsageEvent]
    rejected: dict[str, int]
    done: asyncio.Future[list[bool]]


@dataclass
class Counters:
    models: dict[str, ModelTotals] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    # (reservations, tokens) settled long ago whose event never arrived.
    without_event: tuple[int, int] = (0, 0)

    def all(self) -> Totals:
        total = Totals()
        for m in self.models.values():
            total.add(m.totals)
        return total


class Ledger:
    def __init__(
        self,
        store: UsageStore,
        metrics: MeteringMetrics,
        max_age_seconds: float,
        max_future_seconds: float,
        clock: Callable[[], float] = time.time,
        retention_seconds: float | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._max_age = max_age_seconds
        self._max_future = max_future_seconds
        self._clock = clock
        self._retention = retention_seconds
        # Store work happens on one thread, off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-store")
        self._pending: list[_Submission] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        """Starts the writer. A store of its own continues the Prometheus counters from its totals; on a
        shared one each replica counts its own ingest (sum them across replicas)."""
        if not self._store.shared:
            counters = await self.counters()
            self._metrics.reload(counters.models, counters.rejections)
        self._tasks = [asyncio.create_task(self._writer()), asyncio.create_task(self._refresh_gauges())]
        if self._retention is not None:
            self._tasks.append(asyncio.create_task(self._prune_events(self._retention)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._run(self._store.close)
        self._executor.shutdown()

    async def record(self, events: list[UsageEvent]) -> list[Ack]:
        """Acks in the events' order; returns only after the accepted ones are committed."""
        now = self._clock()
        acks: list[Ack | None] = [None] * len(events)
        accepted: list[tuple[int, UsageEvent]] = []
        rejected: dict[str, int] = defaultdict(int)
        for i, given in enumerate(events):
            event = clamped(given)
            try:
                check(event, now, self._max_age, self._max_future)
            except Rejection as why:
                acks[i] = Ack(event.event_id, REJECTED, str(why))
                rejected[why.kind] += 1
            else:
                accepted.append((i, event))
        done: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Submission([e for _, e in accepted], dict(rejected), done))
        self._wake.set()
        inserted = await done
        for (i, event), fresh in zip(accepted, inserted):
            acks[i] = Ack(event.event_id, RECORDED if fresh else DUPLICATE)
        return [a for a in acks if a is not None]

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            events = [e for s in batch for e in s.events]
            rejected: dict[str, int] = defaultdict(int)
            for s in batch:
                for kind, count in s.rejected.items():
                    rejected[kind] += count
            try:
                commit = await self._run(self._store.commit, events, self._clock(), dict(rejected))
            except Exception as error:
                for s in batch:
                    if not s.done.done():
                        s.done.set_exception(error)
                continue
            self._apply(commit, events, rejected)
            offset = 0
            for s in batch:
                if not s.done.done():
                    s.done.set_result(commit.inserted[offset : offset + len(s.events)])
                offset += len(s.events)

    def _apply(self, commit: Commit, events: list[UsageEvent], rejected: dict[str, int]) -> None:
        for model, count in commit.duplicated_by_model.items():
            self._metrics.duplicated.labels(self._metrics.model_label(model)).inc(count)
        for kind, count in rejected.items():
            self._metrics.rejected.labels(kind).inc(count)
        self._metrics.recorded([event for event, inserted in zip(events, commit.inserted) if inserted])

    async def counters(self) -> Counters:
        """Every replica's running totals, as committed."""
        return Counters(
            await self._run(self._store.model_totals),
            await self._run(self._store.rejections),
            await self._run(self._store.settled_without_event, self._clock()),
        )

    async def throughput(self) -> dict[str, dict[float, float]]:
        """Output tokens per second by model and window, from every replica's commits."""
        now = self._clock()
        cells = await self._run(self._store.throughput_cells, now)
        return {model: {window: window_rate(c, window, now) for window in WINDOWS} for model, c in cells.items()}

    async def _refresh_gauges(self, interval: float = 1.0) -> None:
        """The gauges read from the store: throughput windows and stored totals (the same on every
        replica of a shared store: take max, not sum)."""
        while True:
            try:
                by_model = await self.throughput()
                self._metrics.stored((await self.counters()).models)
            except Exception as error:
                log.warning("gauges from the store not refreshed: %s", error)
                by_model = {}
            rates: dict[tuple[str, float], float] = {}
            for model, windows in by_model.items():
                label = self._metrics.model_label(model)
                for window, rate in windows.items():
                    rates[label, window] = rates.get((label, window), 0.0) + rate
            for (label, window), rate in rates.items():
                self._metrics.throughput.labels(label, f"{window:.0f}s").set(rate)
            await asyncio.sleep(interval)

    def _kept_since(self) -> float | None:
        """Events that occurred before this may have been pruned."""
        return None if self._retention is None else self._clock() - self._retention

    async def prune_once(self, retention_seconds: float, batch: int = _PRUNE_BATCH) -> int:
        """Prunes the events older than the retention (and a day more, for replicas' clock skew), and their
        one-second rollups, in batches, each its own short transaction between commits; how many events went."""
        before = self._clock() - retention_seconds - _PRUNE_MARGIN_SECONDS
        pruned = 0
        while True:
            gone = await self._run(self._store.prune_events, before, batch)
            pruned += gone
            if gone < batch:
                break
            await asyncio.sleep(_PRUNE_PAUSE_SECONDS)
        while await self._run(self._store.prune_second_rollups, before):
            await asyncio.sleep(_PRUNE_PAUSE_SECONDS)
        return pruned

    async def _prune_events(self, retention_seconds: float) -> None:
        while True:
            try:
                if pruned := await self.prune_once(retention_seconds):
                    log.info("pruned %d events older than the retention", pruned)
            except Exception as error:
                log.warning("events not pruned: %s", error)
            await asyncio.sleep(_PRUNE_INTERVAL_SECONDS)

    async def reserve(
        self, source: str, event_id: str, api_key_id: str, tokens: int, lease_seconds: float, cost_micro: int = 0
    ) -> tuple[Decision, tuple[Standing, ...]]:
        now = self._clock()
        return await self._run(
            self._store.reserve, source, event_id, api_key_id, tokens, lease_seconds, now, cost_micro
        )

    async def settle(self, source: str, event_id: str, tokens: int, cost_micro: int | None = None) -> None:
        await self._run(self._store.settle, source, event_id, tokens, cost_micro)

    async def renew(self, source: str, lease_seconds: float) -> None:
        await self._run(self._store.renew, source, lease_seconds, self._clock())

    async def set_limits(self, limits: KeyLimits, actor: str = "", scope: str | None = None) -> tuple[Standing, ...]:
        await self._run(self._store.set_limits, limits, self._clock(), actor, scope)
        return await self.standing(limits.api_key_id)

    async def all_limits(self) -> list[KeyLimits]:
        return await self._run(self._store.all_limits)

    async def standing(self, subject: str, scope: str | None = None) -> tuple[Standing, ...]:
        return await self._run(self._store.standing, subject, self._clock(), scope)

    async def change(self, method: Callable[..., _T], /, **fields: object) -> _T:
        """A UsageStore method given the ledger's clock as `now` (a change to keys, teams, organisations, or
        the outbox), off the event loop."""
        return await self._run(lambda: method(self._store, now=self._clock(), **fields))

    async def read(self, method: Callable[..., _T], /, **fields: object) -> _T:
        """A UsageStore method, off the event loop."""
        return await self._run(lambda: method(self._store, **fields))

    async def key_version(self) -> int:
        return await self._run(self._store.key_version)

    async def keys_since(self, version: int) -> list[KeyRecord]:
        return await self._run(self._store.keys_since, version)

    async def totals(self, query: Query, group_by: tuple[str, ...]) -> list[tuple[dict[str, str], Totals]]:
        return await self._run(self._store.totals, query, group_by, self._kept_since())

    async def series(self, query: Query, bucket_seconds: int) -> list[tuple[float, Totals]]:
        return await self._run(self._store.series, query, bucket_seconds, self._kept_since())
